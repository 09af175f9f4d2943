# Writes tests/reference/mclust_bic_small.json: mclust's BIC tables on four small data sets where
# some of its single-start fits stay valid while EM from better starts climbs onto a singularity
# (acidity, 155 × 1, shipped with mclust; geyser, 299 × 2, MASS), or where the short round's
# most promising start does (diabetes, 145 × 3, mclust, its numeric columns; cars, 50 × 2, R's
# datasets: VVE,8 in both), with the data themselves, for the test that select_em fits every
# cell mclust fits at least as well. Run from the repository root (needs R
# with mclust, e.g. Debian's r-cran-mclust; MASS ships with R):
#   Rscript tests/reference/make_mclust_bic_small.R
# mclustBIC(X, G = 1:9) with its defaults; BIC in mclust's sign (larger is better), null where
# mclust gives NA.
suppressMessages(library(mclust))
suppressMessages(library(MASS))
num <- function(v) ifelse(is.na(v), "null", format(v, digits = 17, trim = TRUE))
vec <- function(v) paste0("[", paste(num(v), collapse = ","), "]")
data("acidity", package = "mclust")
data("diabetes", package = "mclust")
sets <- list(acidity = as.matrix(acidity), geyser = as.matrix(MASS::geyser),
             diabetes = as.matrix(diabetes[sapply(diabetes, is.numeric)]),
             cars = as.matrix(datasets::cars))
parts <- c(sprintf("\"about\":\"mclust %s: mclustBIC(X, G = 1:9), BIC in mclust's sign (larger is better), null for NA; X by column. Written by tests/reference/make_mclust_bic_small.R.\"", packageVersion("mclust")))
for (name in names(sets)) {
  X <- sets[[name]]
  b <- mclustBIC(X, G = 1:9, verbose = FALSE)
  models <- colnames(b)
  cols <- paste(sprintf("\"%s\":%s", models, sapply(models, function(m) vec(b[, m]))), collapse = ",")
  xs <- paste(apply(X, 2, vec), collapse = ",")
  parts <- c(parts, sprintf("\"%s\":{\"X\":[%s],\"bic\":{%s}}", name, xs, cols))
}
writeLines(paste0("{", paste(parts, collapse = ","), "}"), "tests/reference/mclust_bic_small.json")
