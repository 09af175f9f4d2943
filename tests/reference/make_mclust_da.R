# Writes tests/reference/mclust_da.json: mclust's discriminant analysis on the bundled iris data,
# for the tests of bayesgmm.fit_classifier and cross_validate_classifier. Run from the
# repository root (needs R with mclust, e.g. Debian's r-cran-mclust):
#   Rscript tests/reference/make_mclust_da.R
# EDDA: MclustDA(X, class, modelType = "EDDA") (every structure, one Gaussian per class), its
# chosen structure, BIC and training error; leave-one-out cross-validation (cvMclustDA with
# nfold = n: no random folds) error and Brier score. MclustDA (a mixture per class, G = 1:5):
# each class's model and G, the training error and the leave-one-out error and Brier score.
suppressMessages(library(mclust))
iris_csv <- read.csv("bayesgmm/datasets/iris.csv")
X <- as.matrix(iris_csv[, 1:4])
cl <- iris_csv$species
n <- nrow(X)
out <- c(sprintf("\"about\":\"mclust %s on bayesgmm/datasets/iris.csv. Written by tests/reference/make_mclust_da.R.\"", packageVersion("mclust")))
edda <- MclustDA(X, cl, modelType = "EDDA", verbose = FALSE)
s <- summary(edda)
cv <- cvMclustDA(edda, nfold = n, verbose = FALSE)
out <- c(out, sprintf("\"edda_model\":\"%s\"", edda$models[[1]]$modelName))
out <- c(out, sprintf("\"edda_bic\":%.10g", edda$bic))
out <- c(out, sprintf("\"edda_train_error\":%.10g", classError(predict(edda)$classification, cl)$errorRate))
out <- c(out, sprintf("\"edda_loo_error\":%.10g", cv$ce))
out <- c(out, sprintf("\"edda_loo_brier\":%.10g", cv$brier))
da <- MclustDA(X, cl, G = 1:5, verbose = FALSE)
models <- sapply(da$models, function(m) sprintf("\"%s\":[\"%s\",%d]", m$observations[1], m$modelName, m$G))
models <- sapply(names(da$models), function(k) sprintf("\"%s\":[\"%s\",%d]", k, da$models[[k]]$modelName, da$models[[k]]$G))
out <- c(out, sprintf("\"mclustda_models\":{%s}", paste(models, collapse = ",")))
out <- c(out, sprintf("\"mclustda_train_error\":%.10g", classError(predict(da)$classification, cl)$errorRate))
cv2 <- cvMclustDA(da, nfold = n, verbose = FALSE)
out <- c(out, sprintf("\"mclustda_loo_error\":%.10g", cv2$ce))
out <- c(out, sprintf("\"mclustda_loo_brier\":%.10g", cv2$brier))
writeLines(paste0("{", paste(out, collapse = ","), "}"), "tests/reference/mclust_da.json")
