"""EM on dask input: one pass over the chunks per iteration, the same answers as in memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayesgmm as bg

da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    covs = np.stack([np.cov(rng.normal(size=(3, 9))) for _ in range(3)])
    truth = bg.GaussianMixture([0.3, 0.3, 0.4], rng.normal(scale=3, size=(3, 3)), covs, "VVV")
    return truth.sample(2000, rng=1)[0]


def _start(X: np.ndarray, structure: str) -> bg.GaussianMixture:
    # The hierarchical start's first mixture moved away from the optimum (equal weights, means
    # shifted, covariances inflated; still of the structure): EM needs a dozen iterations.
    m = bg.fit_em(X, 3, covariance_type=structure, n_init=1, max_iter=1).model
    return bg.GaussianMixture(
        np.full(3, 1 / 3), m.means + 0.7, 2.0 * m.covariances, covariance_type=structure
    )


@pytest.mark.parametrize("structure", ["VVV", "VEV", "EII"])
def test_same_answer_as_in_memory_from_the_same_start(data, structure):
    # The bar: 20 chunks against the array in memory, from the same start: the same
    # log-likelihood to 1e-10 (relative) and the same parameters to 1e-8.
    start = _start(data, structure)
    here = bg.fit_em(data, 3, covariance_type=structure, init=start)
    chunked = bg.fit_em(da.from_array(data, chunks=(100, 3)), 3, covariance_type=structure,
                        init=start)  # fmt: skip
    assert chunked.n_iter == here.n_iter
    np.testing.assert_allclose(chunked.loglik, here.loglik, rtol=1e-10)
    np.testing.assert_allclose(chunked.icl, here.icl, rtol=1e-8)  # a function of the parameters
    for name in ("weights", "means", "covariances"):
        a, b = getattr(chunked.model, name), getattr(here.model, name)
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_weights_and_lazy_outputs(data):
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=data.shape[0])
    start = _start(data, "VVV")
    Xd = da.from_array(data, chunks=(300, 3))
    here = bg.fit_em(data, 3, init=start, sample_weight=w)
    chunked = bg.fit_em(Xd, 3, init=start, sample_weight=w)
    np.testing.assert_allclose(chunked.loglik, here.loglik, rtol=1e-10)
    # No (N, K) array is built unless asked for: responsibilities and labels stay lazy.
    assert isinstance(chunked.responsibilities, da.Array)
    np.testing.assert_allclose(chunked.responsibilities.compute(), here.responsibilities,
                               atol=1e-10)  # fmt: skip
    model = here.model
    for method in ("log_prob", "responsibilities", "predict"):
        lazy = getattr(model, method)(Xd)
        assert isinstance(lazy, da.Array)
        np.testing.assert_allclose(lazy.compute(), getattr(model, method)(data), rtol=1e-12)
    assert model.score(Xd) == pytest.approx(model.score(data), rel=1e-12)


def test_default_start_is_on_a_subsample_and_every_number_full_data(data):
    fit = bg.fit_em(da.from_array(data, chunks=(250, 3)), 3)
    assert fit.init == "hc"
    assert fit.loglik == pytest.approx(fit.model.score(data), rel=1e-10)
    assert fit.n_obs == data.shape[0]
    memory = bg.fit_em(data, 3)
    assert fit.loglik == pytest.approx(memory.loglik, rel=1e-6)  # the same optimum


def test_dataframe_and_xarray_inputs_keep_feature_names(data):
    dd = pytest.importorskip("dask.dataframe")
    frame = pd.DataFrame(data, columns=["a", "b", "c"])
    start = _start(data, "EEE")
    ref = bg.fit_em(frame, 3, covariance_type="EEE", init=start)
    fit = bg.fit_em(dd.from_pandas(frame, npartitions=5), 3, covariance_type="EEE", init=start)
    assert fit.model.feature_names == ("a", "b", "c")
    np.testing.assert_allclose(fit.loglik, ref.loglik, rtol=1e-10)
    arr = xr.DataArray(data, dims=("obs", "feature"), coords={"feature": ["a", "b", "c"]})
    fit = bg.fit_em(arr.chunk({"obs": 400}), 3, covariance_type="EEE", init=start)
    assert fit.model.feature_names == ("a", "b", "c")
    np.testing.assert_allclose(fit.loglik, ref.loglik, rtol=1e-10)
    text = frame.assign(label="x")
    with pytest.raises(ValueError, match=r"non-numeric column\(s\) \['label'\]"):
        bg.fit_em(dd.from_pandas(text, npartitions=2), 2)


def test_bad_input_says_where(data):
    Xd = da.from_array(data, chunks=(100, 3))
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*compute_chunk_sizes"):
        bg.fit_em(Xd[Xd[:, 0] > 0], 2)
    late = data.copy()
    late[1950, 1] = np.inf  # in the last of 20 chunks
    with pytest.raises(ValueError, match=r"infinite value \(inf\) in chunk 19 \(row 1950\)"):
        bg.fit_em(da.from_array(late, chunks=(100, 3)), 2)
    late[1950, 1] = np.nan
    with pytest.raises(ValueError, match=r"missing value \(NaN\) in chunk 19 \(row 1950\)"):
        bg.fit_em(da.from_array(late, chunks=(100, 3)), 2)
    # The pass itself (which scans a block only when its log-likelihood is not finite), for
    # data that changed after the first pass's moments were taken.
    from bayesgmm.core._dask import chunked_pass
    from bayesgmm.core._passes import mixture_density

    m = bg.fit_em(data, 2).model
    p = mixture_density(m.weights[None], m.means[None], m.cholesky[None], False, data.mean(0))
    for bad, what in ((np.inf, "infinite value"), (np.nan, "missing value")):
        late[1950, 1] = bad
        with pytest.raises(ValueError, match=what + r".* in chunk 19 \(row 1950\)"):
            chunked_pass(da.from_array(late, chunks=(100, 3)), p, stats="full")
    with pytest.raises(ValueError, match="prior= is not available for dask input"):
        bg.fit_em(Xd, 2, prior=bg.ConjugatePrior())
    with pytest.raises(ValueError, match="init for a dask array"):
        bg.fit_em(Xd, 2, init=np.zeros(2000, int))
    # What does not take dask input yet says so instead of gathering the data.
    with pytest.raises(ValueError, match="X is a dask collection"):
        bg.hierarchical(Xd)
    with pytest.raises(ValueError, match="kind='parametric' is not available for dask"):
        bg.bootstrap_em(bg.fit_em(data, 2), Xd, n_boot=2, kind="parametric")


@pytest.mark.parametrize("held", ["persisted", "streamed"])
def test_a_local_cluster_of_two_processes_gives_the_same_answer_even_losing_a_worker(
    data, held, monkeypatch
):
    # Two worker processes; after the first pass one is killed (SIGKILL), taking the chunks it
    # held. Dask recomputes them elsewhere (the nanny restarts the worker): the fit finishes
    # with the in-memory answer, never with a partial sum. Data small enough is persisted on
    # the workers (a task per chunk); "streamed" is data read from its store every pass, where
    # each task reads a run of chunks itself.
    import os
    import signal

    distributed = pytest.importorskip("distributed")
    from bayesgmm.core import _dask
    from bayesgmm.core._dask import pass_log
    from bayesgmm.core.bootstrap import replicate_em

    if held == "streamed":
        monkeypatch.setattr(_dask, "persist_if_small", lambda X: X)

    start = _start(data, "VVV")
    here = bg.fit_em(data, 3, init=start, accelerate=False)  # plain EM: more passes
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        victim = next(iter(pids.values()))
        passes = []

        def kill_one(seconds, loglik):
            passes.append(seconds)
            if len(passes) == 1:
                os.kill(victim, signal.SIGKILL)

        Xd = da.from_array(data, chunks=(100, 3))
        if held == "streamed":  # 16 tasks (8 per worker thread) of one or two of the 20 chunks
            runs = _dask._groups([Xd], 2)
            assert runs is not None
            assert sorted({len(g.keys) for g in runs}) == [1, 2]
            assert sum(len(g.keys) for g in runs) == 20 and len(runs) == 16
        with pass_log(kill_one):
            chunked = bg.fit_em(Xd, 3, init=start, accelerate=False)
        assert victim not in client.run(os.getpid).values()  # it was lost and replaced
        if held == "streamed":  # a task that reads a bad chunk says where, as on one machine
            late = data.copy()
            late[1950, 1] = np.inf
            with pytest.raises(ValueError, match=r"infinite value \(inf\) in chunk 19 \(row 1950"):
                bg.fit_em(da.from_array(late, chunks=(100, 3)), 2)
            # Row weights (a second array, each task reading its chunks beside X's) and the
            # bootstrap's per-chunk weight streams: the answers of one machine.
            wts = np.random.default_rng(4).uniform(0.5, 2.0, data.shape[0])
            w_dask = da.from_array(wts, chunks=100)
            weighted = bg.fit_em(Xd, 3, init=start, accelerate=False, sample_weight=w_dask)
            reps = replicate_em(here, Xd, n_boot=2, kind="weighted", rng=5)
    assert len(passes) > 1
    np.testing.assert_allclose(chunked.loglik, here.loglik, rtol=1e-10)
    # The recomputed chunks are summed in another order: rounding, then EM's stopping point
    # (a relative change of 1e-8 per iteration), move the parameters in their 8th digit.
    np.testing.assert_allclose(chunked.model.covariances, here.model.covariances, rtol=1e-6)
    if held == "streamed":
        alone = bg.fit_em(data, 3, init=start, accelerate=False, sample_weight=wts)
        np.testing.assert_allclose(weighted.loglik, alone.loglik, rtol=1e-10)
        threads = replicate_em(here, Xd, n_boot=2, kind="weighted", rng=5)  # dask's threads
        np.testing.assert_allclose(reps.loglik, threads.loglik, rtol=1e-10)


def test_select_em_screens_on_a_subsample_and_reports_full_data_numbers(data):
    # The grid runs in memory on a seeded subsample of screen // 4 rows; then every cell runs
    # full-data EM over the chunks from the subsample's best fit and the hierarchical start,
    # all cells sharing each pass. Every number is a full-data log-likelihood, and no cell is
    # below full-data EM from the subsample's best fit (one of its two starts).
    ks, structures = range(1, 4), ["VVV", "EEE"]
    sel = bg.select_em(da.from_array(data, chunks=(100, 3)), ks, structures, screen=1200)
    gen = np.random.default_rng(0)  # the subsample select_em draws first from rng=0
    rows = np.sort(gen.choice(data.shape[0], size=300, replace=False))
    sub = bg.select_em(data[rows], ks, structures, rng=gen, screen=None)
    for (structure, k), fit in sel.results.items():
        assert fit.loglik == pytest.approx(fit.model.score(data), rel=1e-10)
        alone = bg.fit_em(
            data, k, covariance_type=structure, init=sub.results[(structure, k)].model
        )
        assert fit.loglik >= alone.loglik - 1e-9 * abs(alone.loglik), (structure, k)
    assert (sel.best.covariance_type, sel.best.n_components) == ("VVV", 3)
    assert isinstance(sel.best.responsibilities, da.Array)


def test_select_em_on_chunks_tries_the_screens_runner_up_and_never_does_worse(monkeypatch):
    # As in memory, each cell's runner-up on the screen (a distinct optimum close behind its
    # best there) challenges the two lead starts over the chunks: runners-up are offered, and
    # with them turned off (a gap of 0) no cell is better.
    from bayesgmm.core import _engine, select

    rng = np.random.default_rng(5)
    centres = rng.normal(scale=2.5, size=(5, 3))
    X = np.concatenate([rng.normal(size=(700, 3)) * rng.uniform(0.5, 1.5) + c for c in centres])
    Xd = da.from_array(X, chunks=(500, 3))
    grid = (range(3, 8), ["VVV", "EEI", "VII"])
    offered = []
    real = _engine.advance

    def spy(X, runs, *args, **kwargs):
        offered.extend(r.label for rs in runs.values() for r in rs if "runner-up" in r.label)
        return real(X, runs, *args, **kwargs)

    monkeypatch.setattr(_engine, "advance", spy)
    with_runner = bg.select_em(Xd, *grid, screen=2_000)
    assert offered
    monkeypatch.setattr(_engine, "RUNNER_UP_GAP", 0.0)
    monkeypatch.setattr(select, "RUNNER_UP_GAP", 0.0)
    without = bg.select_em(Xd, *grid, screen=2_000)
    for key, fit in with_runner.results.items():
        other = without.results[key]
        assert fit.loglik >= other.loglik - 1e-8 * abs(other.loglik), key
        assert fit.loglik == pytest.approx(fit.model.score(X), rel=1e-10)


@pytest.mark.parametrize("kind", ["nonparametric", "weighted"])
def test_bootstrap_replicates_on_chunks_are_in_memory_fits_with_the_same_weights(data, kind):
    # Each replicate's row weights are drawn chunk by chunk from its own stream (never stored).
    # Oracle: the weights rebuilt on the client, and the same batched EM in memory with them,
    # from the estimate (the same SQUAREM scale): the same fit to 1e-10.
    from bayesgmm.core._dask import ChunkWeights
    from bayesgmm.core._loop import Run, finish_many, iterate
    from bayesgmm.core.bootstrap import replicate_em
    from bayesgmm.core.em import Params

    X = data[:600]
    fit = bg.fit_em(X, 3, covariance_type="EEE")
    Xd = da.from_array(X, chunks=(150, 3))
    reps = replicate_em(fit, Xd, n_boot=3, kind=kind, rng=5)
    assert reps.replicate.tolist() == [0, 1, 2]
    root = int(np.random.default_rng(5).integers(2**63))
    est = fit.model
    scale = X.std(axis=0)
    runs = []
    for seed in np.random.SeedSequence(root).spawn(3):
        cw = ChunkWeights.draw(kind, Xd.chunks[0], seed)
        w = np.concatenate([cw.block(i, 150, 0, 1)[0] for i in range(4)])
        assert w.sum() == pytest.approx(600, rel=1e-12)  # N draws, or N times a Dirichlet
        if kind == "nonparametric":
            assert (w == np.round(w)).all()
        p = Params(est.weights[None], est.means[None], est.covariances[None], est.cholesky[None])
        runs.append(Run(p, "mixture", est.structure, row_weight=w, scale=scale))
    center = X.mean(axis=0)
    iterate(X, runs, 1000, center=center, w=None, prior=None, reg_covar=0.0, tol=1e-8,
            accelerate=True)  # fmt: skip
    done = finish_many(X, runs, center)
    np.testing.assert_allclose(reps.loglik, done.loglik, rtol=1e-10)
    ours = np.array([m.means for m in done.models])
    np.testing.assert_allclose(np.sort(reps.means, axis=1), np.sort(ours, axis=1), rtol=1e-8)


def test_select_em_on_chunks_builds_one_tree_for_the_screen_and_the_full_data(data, monkeypatch):
    # As in memory, mclust's start on dask input is one hierarchical tree (on 2,000 rows of the
    # subsample), the screen's start and the full data's: not a second tree after the screen.
    from bayesgmm.core import _engine, init, select

    built, labels = [], {}
    real_tree, real_advance = init.hc_tree, _engine.advance

    def tree_spy(*args, **kwargs):
        out = real_tree(*args, **kwargs)
        built.append(out[1])
        return out

    def advance_spy(X, runs, *args, **kwargs):
        labels.update({key: [r.label for r in rs] for key, rs in runs.items()})
        return real_advance(X, runs, *args, **kwargs)

    monkeypatch.setattr(init, "hc_tree", tree_spy)
    monkeypatch.setattr(select, "hc_tree", tree_spy)
    monkeypatch.setattr(_engine, "advance", advance_spy)
    X = np.concatenate([data, data + 0.5])  # 4,000 rows: a subsample of 3,000, a tree on 2,000
    bg.select_em(da.from_array(X, chunks=(500, 3)), range(1, 4), ["VVV", "EEE"], screen=12_000)
    assert len(built) == 1 and built[0].shape[0] == 2000
    assert len(labels) == 6 and all("hc" in starts for starts in labels.values())
