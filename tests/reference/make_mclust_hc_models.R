# Writes tests/reference/mclust_hc_models.json: mclust's model-based agglomerations other than
# the default VVV (in mclust_hc.json), for the tests of bayesgmm.hierarchical. Run from the
# repository root (needs R with mclust, e.g. Debian's r-cran-mclust):
#   Rscript tests/reference/make_mclust_hc_models.R
# hclass(hc(X, modelName = m, use = "SVD"), G = 1..9) for m in EII, VII, EEE on faithful and iris
# (1-based labels, one array per G); and hc(x, "V"), hc(x, "E") for galaxies / 1000.
suppressMessages(library(mclust))
vec <- function(v) paste0("[", paste(format(v, digits = 17, trim = TRUE), collapse = ","), "]")
mat <- function(m) paste0("[", paste(apply(m, 2, vec), collapse = ","), "]")  # by column
data <- list(
  faithful = as.matrix(read.csv("bayesgmm/datasets/faithful.csv")),
  iris = as.matrix(datasets::iris[, 1:4])
)
parts <- c(sprintf("\"about\":\"mclust %s: hclass(hc(X, modelName, use='SVD'), 1:9), 1-based labels. Written by tests/reference/make_mclust_hc_models.R.\"", packageVersion("mclust")))
for (m in c("EII", "VII", "EEE")) {
  for (name in names(data)) {
    h <- hc(data[[name]], modelName = m, use = "SVD")
    parts <- c(parts, sprintf("\"%s_%s\":%s", name, m, mat(hclass(h, 1:9))))
  }
}
# One feature: hc(x, "V") and hc(x, "E") on galaxies / 1000 (mclust builds these on the raw data).
galaxies_x <- read.csv("bayesgmm/datasets/galaxies.csv")[, 1] / 1000
for (m in c("V", "E")) {
  parts <- c(parts, sprintf("\"galaxies_%s\":%s", m, mat(hclass(hc(galaxies_x, modelName = m), 1:9))))
}
writeLines(paste0("{", paste(parts, collapse = ","), "}"), "tests/reference/mclust_hc_models.json")
