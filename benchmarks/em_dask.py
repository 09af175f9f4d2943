"""EM beyond memory: ``fit_em`` on a zarr store through a ``distributed.LocalCluster``, against
the same EM in memory on 1/20 of the rows, in the same run (issue 13's floor).

The data (N × D float64 from a K-component VVV mixture, written chunk by chunk, never whole in
memory) go to a zarr store on disk. Both fits start from the same mixture and run plain EM with
tol = 0 for a fixed number of iterations, so that one iteration is one pass; the time per
iteration is the difference between a run of 1 + I iterations and one of 1, divided by I (set-up,
the statistics of the start and the final scores cancel). Printed: seconds per iteration of
each (the in-memory one measured before and after the dask fits, their mean the reference: the
machine's speed drifts), their ratio against linear scaling (N / N_mem), the peak RSS of every
process (the client, which also holds the scheduler, and each worker; ``getrusage``'s maximum
resident set), and the log-likelihoods.

    uv run python benchmarks/em_dask.py                       # the floor: 2e7 × 10, K = 10
    uv run python benchmarks/em_dask.py --n 2000000 --iters 5 # a quick run

Floor (issue 13): 20 iterations complete with 2 workers × 1 thread and memory_limit="1GB"; peak
RSS of every process ≤ 1.2 GB; seconds per iteration ≤ 1.5× linear scaling from N = 10⁶ in
memory (30× at N = 2·10⁷).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
import warnings
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    """This process's peak resident set size, MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """The largest resident set of some processes, sampled every 0.2 s on a thread (getrusage's
    maximum is no use for workers: a forked process inherits its parent's high-water mark)."""

    def __init__(self, pids: list[int]) -> None:
        import threading

        import psutil

        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak = dict.fromkeys(pids, 0.0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid, proc in self.procs.items():
                try:
                    self.peak[pid] = max(self.peak[pid], proc.memory_info().rss / 2**20)
                except Exception:  # a process that ended
                    pass
            self.stop.wait(0.2)

    def close(self) -> dict[int, float]:
        self.stop.set()
        self.thread.join()
        return self.peak


def worker_pid() -> int:
    import os

    return os.getpid()


def truth(d: int, k: int, seed: int = 0):
    import bayesgmm as bg

    rng = np.random.default_rng(seed)
    weights = 0.5 / k + 0.5 * rng.dirichlet(np.full(k, 5.0))
    means = rng.normal(scale=3.0, size=(k, d))
    covs = np.stack([np.cov(rng.normal(size=(d, 3 * d))) + 0.1 * np.eye(d) for _ in range(k)])
    return bg.GaussianMixture(weights / weights.sum(), means, covs, "VVV")


def write_store(path: Path, n: int, d: int, k: int, chunk: int, compress: bool) -> None:
    """The data, chunk by chunk (each from its own seed), into a zarr store: uncompressed by
    default (random float64 does not compress: zstd keeps 94% of it, and its decompression
    costs about a third of a pass), zarr's default zstd with ``compress``."""
    import dask.array as da

    model = truth(d, k)

    def block(_: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        assert block_info is not None
        i = block_info[None]["chunk-location"][0]
        rows = block_info[None]["chunk-shape"][0]
        return model.sample(rows, rng=np.random.default_rng([7, i]))[0]

    shape = da.zeros((n, d), chunks=(chunk, d))
    arr = shape.map_blocks(block, dtype=np.float64)
    if compress:
        arr.to_zarr(str(path), overwrite=True)
    else:
        arr.to_zarr(str(path), overwrite=True, compressors=None)


def per_iteration(fit, iters: int) -> tuple[float, float]:
    """Seconds per iteration (from runs of 1 + iters and of 1 iteration, after a warm-up run of
    1), and the loglik."""
    fit(1)
    t = time.perf_counter()
    fit(1)
    one = time.perf_counter() - t
    t = time.perf_counter()
    result = fit(1 + iters)
    many = time.perf_counter() - t
    return (many - one) / iters, result.loglik


def in_memory_speed(X: np.ndarray, start, k: int, iters: int) -> tuple[float, float]:
    import bayesgmm as bg

    def fit(n_iter: int):
        return bg.fit_em(X, k, init=start, tol=0.0, max_iter=n_iter, accelerate=False)

    return per_iteration(fit, iters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000_000)
    parser.add_argument("--d", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=250_000, help="rows per chunk")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--store", default="/tmp/bayesgmm-em-dask.zarr")
    parser.add_argument("--keep", action="store_true", help="keep the store for another run")
    parser.add_argument("--compress", action="store_true", help="zarr's default zstd codec")
    args = parser.parse_args()

    import dask.array as da
    from distributed import Client, LocalCluster

    import bayesgmm as bg

    warnings.simplefilter("ignore")
    from bayesgmm.core import _compiled

    # The compiled code users run once numba's cache is built (in the background, the first
    # time): wait for it rather than time the numpy fallback by accident.
    print(f"compiled: {'yes' if _compiled.ready(wait=900) else 'no (BAYESGMM_COMPILED=0?)'}")
    store = Path(args.store)
    n_mem = max(args.n // 20, args.chunk)
    print(f"data: {args.n:,} × {args.d} float64 ({8 * args.n * args.d / 1e9:.2f} GB), "
          f"K = {args.k}, VVV; {args.iters} plain EM iterations (tol = 0)")  # fmt: skip
    t = time.perf_counter()
    if not (store / "zarr.json").exists() and not (store / ".zarray").exists():
        write_store(store, args.n, args.d, args.k, args.chunk, args.compress)
    print(f"zarr store {store} ready in {time.perf_counter() - t:.1f} s")

    lazy = da.from_zarr(str(store))
    start = bg.fit_em(lazy[:20_000].compute(), args.k, n_init=1, max_iter=5).model
    sec_mem, ll_mem = in_memory_speed(lazy[:n_mem].compute(), start, args.k, args.iters)
    print(f"in memory, N = {n_mem:,}: {sec_mem:.3f} s per iteration (loglik {ll_mem:.6g})")
    client_before = peak_rss_mb()

    with (
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip

        def on_store(iters: int):
            X = da.from_zarr(str(store))
            return bg.fit_em(X, args.k, init=start, tol=0.0, max_iter=iters, accelerate=False)

        import os

        pids = list(client.run(worker_pid).values())
        sampler = PeakRSS([os.getpid(), *pids])
        sec_dask, ll_dask = per_iteration(on_store, args.iters)
        peaks = sampler.close()
    print(f"dask, N = {args.n:,}, {args.workers} workers × 1 thread, memory_limit "
          f"{args.memory_limit}: {sec_dask:.3f} s per iteration "
          f"(loglik {ll_dask:.8g})")  # fmt: skip
    # The in-memory iteration again, after the dask fits: this machine's speed drifts by ±10-20%
    # over minutes, so the reference is the mean of a measurement on each side of them.
    sec_after, _ = in_memory_speed(lazy[:n_mem].compute(), start, args.k, args.iters)
    print(f"in memory again, after the dask fits: {sec_after:.3f} s per iteration")
    sec_mem = (sec_mem + sec_after) / 2
    scaling = sec_dask / (sec_mem * args.n / n_mem)
    print(f"ratio: {sec_dask / sec_mem:.1f}× the in-memory iteration (mean of the two) for "
          f"{args.n / n_mem:.0f}× "
          f"the rows = {scaling:.2f}× linear scaling (floor: ≤ 1.5)")  # fmt: skip
    me = os.getpid()
    print(
        f"peak RSS during the dask fits (sampled every 0.2 s): client + scheduler "
        f"{peaks[me]:.0f} MB (its maximum before, with the in-memory fit: {client_before:.0f} "
        "MB); workers "
        + ", ".join(f"{v:.0f} MB" for p, v in peaks.items() if p != me)
        + " (floor: ≤ 1200 MB each)"
    )
    if not args.keep:
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
