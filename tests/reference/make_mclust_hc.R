# Writes tests/reference/mclust_hc.json: mclust's default starting partitions, for the tests of
# bayesgmm's hierarchical start. Run from the repository root (needs R with mclust, e.g.
# Debian's r-cran-mclust):  Rscript tests/reference/make_mclust_hc.R
# mclustBIC's defaults: hc(X, modelName = "VVV", use = "SVD") for several features (cut with
# hclass), qclass(x, G) for one.
suppressMessages(library(mclust))
vec <- function(v) paste0("[", paste(format(v, digits = 17, trim = TRUE), collapse = ","), "]")
mat <- function(m) paste0("[", paste(apply(m, 2, vec), collapse = ","), "]")  # by column
faithful_x <- as.matrix(read.csv("bayesgmm/datasets/faithful.csv"))
galaxies_x <- read.csv("bayesgmm/datasets/galaxies.csv")[, 1] / 1000
iris_x <- as.matrix(datasets::iris[, 1:4])
hc_cut <- function(x, G) hclass(hc(x, modelName = "VVV", use = "SVD"), G)
json <- paste0(
  "{\"about\":\"mclust ", packageVersion("mclust"), ": hclass(hc(X, modelName='VVV', ",
  "use='SVD'), G) for faithful and iris (columns: G = 1..30, 1-based labels), qclass(x, G) ",
  "for galaxies/1000 (G = 1..9). Written by tests/reference/make_mclust_hc.R.\",",
  "\"faithful_hc\":", mat(hc_cut(faithful_x, 1:30)), ",",
  "\"iris_x\":", mat(iris_x), ",",
  "\"iris_hc\":", mat(hc_cut(iris_x, 1:30)), ",",
  "\"galaxies_qclass\":", mat(sapply(1:9, function(G) mclust:::qclass(galaxies_x, G))), "}"
)
writeLines(json, "tests/reference/mclust_hc.json")
