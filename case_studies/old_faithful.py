# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Old Faithful: what BIC chooses, and what LOO and the posterior say
#
# 272 eruptions of the Old Faithful geyser: the eruption's length and the wait before it, in
# minutes (Azzalini & Bowman 1990). mclust's BIC, over its 14 covariance structures and K = 1..9,
# chooses **EEE with three components**: three clusters of the same shape and orientation. The
# two-cluster picture everybody sees in the scatter plot is the runner-up. Does the full posterior
# agree? Does leave-one-out predictive accuracy (PSIS-LOO) pick the same K as BIC?
#
#     uv run python case_studies/old_faithful.py   # writes case_studies/reports/old_faithful.html

# %%
import time
import warnings

import bayesgmm as bg
from bayesgmm.cli.report import Report
from bayesgmm.compare import plots

from _settings import comparison_section, finish, sizes

S = sizes(
    full={
        "ks": range(1, 10),
        "compare_ks": range(1, 6),
        "method": "nuts",
        "draws": 1000,
        "chains": 4,
        "n_boot": 999,
    },
    tiny={
        "ks": range(1, 4),
        "compare_ks": range(2, 4),
        "method": "laplace",
        "draws": 50,
        "chains": 2,
        "n_boot": 20,
    },
)
t0 = time.time()
X = bg.datasets.load_faithful()
report = Report("Old Faithful: EEE,3 by BIC, against LOO and the posterior")

# %% [markdown]
# ## EM over every structure and K, as mclust

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore", bg.DegenerateFitWarning)
    sel = bg.select_em(X, S["ks"], "all", rng=0)
best = sel.best
print(sel.top(5))
report.heading("EM over the 14 structures, by BIC")
report.paragraph(
    f"BIC chooses {best.covariance_type} with K = {best.n_components} (BIC {best.bic:.2f}; "
    f"mclust 6.0.0 reports −BIC = −2314.32 for EEE,3 on these data)."
)
report.table(sel.top(5))
report.figure(plots.plot_bic(sel), "BIC of every structure against K.")
report.figure(plots.plot_mixture(best, X), f"{best.covariance_type}, K = {best.n_components}.")

# %% [markdown]
# ## K by BIC, ICL and LOO for EEE
#
# ICL adds the entropy of the classification to BIC, so it prefers well-separated clusters;
# LOO asks which K predicts a left-out eruption best, with the posterior's uncertainty included.

# %%
cmp = bg.compare_k(
    X,
    S["compare_ks"],
    covariance_type="EEE",
    methods=("bic", "icl", "loo"),
    bayes_method=S["method"],
    draws=S["draws"],
    tune=S["draws"],
    chains=S["chains"],
    rng=1,
)
print(cmp)
comparison_section(report, cmp, "How many clusters of the EEE shape?")

# %% [markdown]
# ## EM against the posterior at EEE, K = 3

# %%
k = 3 if 3 in cmp.fits else max(cmp.fits)
fit = cmp.fits[k]
post = cmp.posteriors[k]
boot = bg.bootstrap_em(fit, X, n_boot=S["n_boot"], rng=2)
table = bg.compare_estimates(fit, post, bootstrap=boot)
print(table.round(3))
report.heading(f"EM, bootstrap and posterior at EEE, K = {k}")
report.table(table.drop(columns=["parameter", "component", "feature", "feature_bis"]))
report.figure(
    plots.plot_forest(fit, post, bootstrap=boot, var_names=["weights"]),
    "Weights: posterior, bootstrap and EM.",
)

# %% [markdown]
# ## Reading

# %%
ratio = table["boot_se"] / table["post_sd"]
reading = [
    f"BIC's choice is {best.covariance_type},{best.n_components}. Over K for EEE, the criteria "
    f"pick: {', '.join(f'{c.upper()} K = {v}' for c, v in cmp.choices.items())}.",
    (
        "ICL prefers fewer clusters than BIC here, the textbook contrast: two of EEE,3's "
        "clusters overlap, and ICL charges for the uncertain classification that overlap brings, "
        "while BIC only asks how well the density fits."
        if cmp.choices.get("icl", 0) < cmp.choices.get("bic", 0)
        else "ICL agrees with BIC here: the clusters are separated enough that classifying the "
        "eruptions costs ICL little."
    ),
    f"At K = {k}, EM's estimate lies inside the posterior's 94% interval for "
    f"{int(table['em_in_interval'].sum())} of {len(table)} parameters. Bootstrap standard errors "
    f"run from {ratio.min():.2f} to {ratio.max():.2f} times the posterior sds: largest where the "
    "two overlapping clusters trade points between replicates.",
]
finish(report, reading, S, "old_faithful", t0)
