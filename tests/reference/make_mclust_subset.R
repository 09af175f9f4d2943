# Writes tests/reference/mclust_subset.json: mclust's start on data of more than 2,000 rows, a
# hierarchical tree on a random subset of rows (initialization = list(subset = ...)), for the
# test that ours from the same subset is mclust's. Run from the repository root (needs R with
# mclust, e.g. Debian's r-cran-mclust):  Rscript tests/reference/make_mclust_subset.R
# The data need no file: row i (1-based) of component (i - 1) %% 4 is its centre plus a Weyl
# sequence, (i * a_j) %% 1 - 0.5 per feature, which R and numpy compute to the same bits
# (tests/core/test_mclust.py builds them the same way).
suppressMessages(library(mclust))
n <- 6000
a <- c(0.7548776662466927, 0.5698402909980532, 0.4302530004999999)
centres <- rbind(c(0, 0, 0), c(1.2, 0.3, 0), c(0.2, 1.1, 0.4), c(0.9, 0.9, 1.3))
i <- 1:n
X <- sapply(1:3, function(j) centres[(i - 1) %% 4 + 1, j] + ((i * a[j]) %% 1 - 0.5))
cells <- list(c("EII", 5), c("VVI", 5), c("EEV", 4), c("VVV", 4))
vec <- function(v) paste0("[", paste(format(v, digits = 17, trim = TRUE), collapse = ","), "]")
runs <- character(0)
for (seed in 1:2) {
  set.seed(seed)
  s <- sort(sample(1:n, 2000))
  bic <- sapply(cells, function(cell) {
    b <- mclustBIC(X, G = as.integer(cell[2]), modelNames = cell[1],
                   initialization = list(subset = s))
    b[1, cell[1]]
  })
  runs <- c(runs, paste0("{\"subset\":", vec(s), ",\"bic\":", vec(bic), "}"))
}
json <- paste0(
  "{\"about\":\"mclust ", packageVersion("mclust"), ": mclustBIC(X, G, modelNames, ",
  "initialization = list(subset = s)) for the cells, BIC in mclust's sign (larger is better); ",
  "s: 2,000 rows (1-based) drawn by set.seed(seed); sample(1:n, 2000). Written by ",
  "tests/reference/make_mclust_subset.R.\",",
  "\"n\":", n, ",\"a\":", vec(a), ",\"centres\":[", paste(apply(centres, 1, vec), collapse = ","),
  "],\"cells\":[", paste(sapply(cells, function(c) paste0("\"", c[1], ",", c[2], "\"")),
                          collapse = ","), "],",
  "\"runs\":[", paste(runs, collapse = ","), "]}"
)
writeLines(json, "tests/reference/mclust_subset.json")
