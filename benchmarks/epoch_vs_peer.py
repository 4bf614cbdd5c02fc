"""Seconds per training epoch: a peer-style PyTorch loop vs tune-siamese's engine, side by side in one run.

Same model (training.model.SiameseNet: Koch net, width 0.25, BatchNorm, Koch init), same optimiser (Adam, lr 1e-3,
batch 32), same LFW-a DevTrain training pairs, same seed (identical initial weights):

  peer     the way published Siamese implementations are written (pytorch/examples' siamese_network, and
           most GitHub Siamese repositories): a torch.utils.data.Dataset whose __getitem__ opens both JPEGs with
           PIL and applies torchvision Grayscale + Resize(105) + ToTensor per item; a shuffling DataLoader
           (batch 32); fp32, NCHW; a plain loop that calls loss.item() every 10 batches (its log line).
           DataLoader workers: pytorch/examples' choice, 0 on the CPU and 1 (pin_memory) on CUDA, is the
           reference; a second peer row uses more workers (2 = one per core here; 8 on CUDA, as the popular
           harveyslash/Facial-Similarity-with-Siamese-Networks does).
  project  training.engine.train_one_epoch on the cached uint8 arrays (images_on: decoded once, batches
           gathered and converted on the device): fp32 NCHW, fp32 channels_last, bf16 autocast channels_last;
           on CUDA also fp32 NCHW and bf16 channels_last with Config.cuda_graphs (each full batch one CUDA graph
           replay, warmed up by its capture).

Timing: every variant first runs a few warm-up batches on a throwaway copy, then epoch 1 of all variants runs
interleaved in --rounds slices (variant A slice 1, B slice 1, ..., A slice 2, ...) so a change in machine load
hits all of them alike; a peer with DataLoader workers runs its epoch in one slice (its workers would otherwise
prefetch while the others are timed). The peer's JPEG files are read once beforehand (warm page cache, as in
any epoch after the first). bf16 on a CPU without AVX512-BF16/AMX is emulated and very slow: there it trains
only --bf16-max-pairs pairs and its s/epoch is extrapolated (marked *).
Quality: the reference peer and the fastest project variant then continue to --epochs epochs; the val loss of
every model is scored by one evaluator (scoring.predict, fp32, on the cached val arrays); the peer is also scored
by its own pipeline. Noise: both are trained again with --noise-seeds other seeds (interleaved, so their epoch
times join the mean), and the difference of the mean val losses is compared with its standard error.
FLOP/s: forward FLOPs per image from training.costs.flop_count of one image's embedding (the head adds a few
thousand per pair); a training step ~ 3x forward (forward + backward for inputs and weights), x2 images per pair,
x pairs; compared with torch.mm at fp32 and bf16 in this same process with the same threads.

    python3 benchmarks/epoch_vs_peer.py                         # real LFW-a beside the repo, full DevTrain
    python3 benchmarks/epoch_vs_peer.py --pairs 320 --epochs 1 --noise-seeds 0 --no-record   # quick check
    python3 benchmarks/epoch_vs_peer.py --data synthetic        # no LFW here: synthetic faces as 250 px JPEGs
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tune_siamese.core.config import Config  # noqa: E402
from tune_siamese.data import (  # noqa: E402
    PairData,
    decode_image,
    find_pair_lists,
    lfw_image_path,
    load_data,
    parse_pair_list,
    render_synthetic,
)
from tune_siamese.training.costs import flop_count  # noqa: E402
from tune_siamese.training.device import cpu_has_native_bf16  # noqa: E402
from tune_siamese.training.engine import graphed_step, model_and_optimizer, train_one_epoch  # noqa: E402
from tune_siamese.training.model import build_model  # noqa: E402
from tune_siamese.training.scoring import images_on, predict  # noqa: E402

LOG_INTERVAL = 10  # pytorch/examples' siamese_network logs loss.item() every 10 batches


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="LFW-a folder with pairsDevTrain/DevTest (default: $TUNE_SIAMESE_LFW or ../shared/data/"
                        "lfw-a beside the repo), or 'synthetic': synthetic faces written as 250 px JPEGs in the "
                        "LFW-a layout in a temporary folder (for machines without LFW)")
    p.add_argument("--pairs", type=int, default=0, help="use a seeded random subset of N training pairs (0 = all)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the peer and the fastest project variant")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=105)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for everything (default 2)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    p.add_argument("--peer-workers", default="auto",
                   help="comma list of DataLoader num_workers, one peer row each, the first is the reference "
                        "(auto: 0,2 on the CPU; 1,8 on CUDA)")
    p.add_argument("--rounds", type=int, default=4, help="slices that epoch 1 of the variants is interleaved in")
    p.add_argument("--warmup-batches", type=int, default=3)
    p.add_argument("--bf16-max-pairs", type=int, default=320,
                   help="on a CPU without native bf16, train the bf16 variant on this many pairs and extrapolate "
                        "(0 = a full epoch)")
    p.add_argument("--noise-seeds", type=int, default=2,
                   help="train the peer and the fastest project variant with this many other seeds too, for the "
                        "seed-to-seed spread of the val loss")
    p.add_argument("--mm-size", type=int, default=0, help="square matmul size (default 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------------
# Data: the project's PairData plus the JPEG path of every image index, for the peer


def write_synthetic_lfwa(root: Path, n_ids: int = 400, per: int = 5, seed: int = 0) -> Path:
    """Synthetic faces (tune_siamese's renderer at 125 px, upscaled to LFW-a's 250 px) as grayscale JPEGs in
    the LFW-a layout, with DevTrain (1100 + 1100) and DevTest (500 + 500) lists over disjoint identities."""
    images, identity = render_synthetic(n_ids, per, 125, seed)
    names = [f"Synthetic_{k:04d}" for k in range(n_ids)]
    for index, (image, k) in enumerate(zip(images, identity)):
        path = lfw_image_path(root / "lfw2", names[k], index % per + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((250, 250), Image.Resampling.BICUBIC).save(path, quality=90)
    rng = np.random.default_rng(seed)

    def pair_list(ids: np.ndarray, n: int) -> str:
        same: list[tuple] = []
        diff: list[tuple] = []
        while len(same) < n:
            i, j = sorted(rng.choice(per, 2, replace=False) + 1)
            row = (int(rng.choice(ids)), int(i), int(j))
            if row not in same:
                same.append(row)
        while len(diff) < n:
            a, b = rng.choice(ids, 2, replace=False)
            row = (int(a), int(rng.integers(1, per + 1)), int(b), int(rng.integers(1, per + 1)))
            if row not in diff:
                diff.append(row)
        lines = [str(n), *(f"{names[k]}\t{i}\t{j}" for k, i, j in same),
                 *(f"{names[a]}\t{i}\t{names[b]}\t{j}" for a, i, b, j in diff)]
        return "\n".join(lines) + "\n"

    cut = int(n_ids * 0.7)
    (root / "pairsDevTrain.txt").write_text(pair_list(np.arange(cut), 1100))
    (root / "pairsDevTest.txt").write_text(pair_list(np.arange(cut, n_ids), 500))
    return root


def lfw_paths(root: Path) -> list[Path]:
    """The JPEG of every image index, in the order tune_siamese.data.load_lfw_folder numbers them."""
    lists = find_pair_lists(root)
    if lists is None:
        raise SystemExit(f"epoch_vs_peer: {root} has no pairsDevTrain.txt / pairs.txt (use an LFW-a folder or "
                         f"--data synthetic)")
    train_path, test_path = lists
    folds = parse_pair_list(train_path)
    if test_path is not None:
        groups = [[p for fold in folds for p in fold], [p for fold in parse_pair_list(test_path) for p in fold]]
    else:
        groups = [[p for fold in folds[:-1] for p in fold], folds[-1]]
    image_dir = next((d for d in (root / "lfw2", root / "lfw") if d.is_dir()), root)
    seen: set[tuple[str, int]] = set()
    paths: list[Path] = []
    for lines in groups:
        for pair in lines:
            for key in ((pair.name_a, pair.index_a), (pair.name_b, pair.index_b)):
                if key not in seen:
                    seen.add(key)
                    paths.append(lfw_image_path(image_dir, *key))
    return paths


def check_paths(paths: list[Path], data: PairData, cfg: Config) -> None:
    if len(paths) != len(data.images):
        raise SystemExit(f"epoch_vs_peer: {len(paths)} image paths but the cached data has {len(data.images)}")
    for i in np.linspace(0, len(paths) - 1, 4).astype(int):
        if not np.array_equal(decode_image(paths[i], cfg.image_size, cfg.crop), data.images[i]):
            raise SystemExit(f"epoch_vs_peer: image {i} ({paths[i]}) does not match the cached array")


# ------------------------------------------------------------------------------------------------------
# The peer: per-item JPEG decoding in a Dataset, a DataLoader, a plain fp32 NCHW loop


class PeerPairs(torch.utils.data.Dataset):
    """One pair per item; both JPEGs opened with PIL and transformed with torchvision in __getitem__."""

    def __init__(self, rows: list[tuple[Path, Path, int]], size: int):
        from torchvision import transforms

        self.rows = rows
        self.transform = transforms.Compose([transforms.Grayscale(num_output_channels=1),
                                             transforms.Resize((size, size)), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        path_a, path_b, label = self.rows[index]
        image_a = self.transform(Image.open(path_a))
        image_b = self.transform(Image.open(path_b))
        return image_a, image_b, torch.tensor(label, dtype=torch.float32)


def slices(n_batches: int, rounds: int) -> list[int]:
    """Batches per round, as even as possible."""
    edges = np.linspace(0, n_batches, rounds + 1).round().astype(int)
    return list(np.diff(edges))


class Runner:
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    channels_last = False
    capped = 0  # pairs per epoch when capped (extrapolated), else 0

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.epoch_pairs: list[int] = []
        self.train_losses: list[float] = []
        self.val: list[dict[str, float]] = []
        self.own_val: list[float] = []

    def seconds_per_epoch(self, epoch_pairs: int, epochs: slice = slice(None)) -> float:
        secs, pairs = sum(self.epoch_seconds[epochs]), sum(self.epoch_pairs[epochs])
        return secs / max(pairs, 1) * epoch_pairs * len(self.epoch_seconds[epochs])


class PeerRunner(Runner):
    def __init__(self, name: str, cfg: Config, rows: list, device: torch.device, workers: int, seed: int):
        super().__init__()
        self.name, self.cfg, self.device, self.workers = name, cfg, device, workers
        torch.manual_seed(seed)
        self.model = build_model(cfg).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.criterion = torch.nn.BCEWithLogitsLoss()
        kwargs: dict[str, Any] = {"batch_size": cfg.batch_size, "shuffle": True,
                                  "generator": torch.Generator().manual_seed(seed), "num_workers": workers}
        if device.type == "cuda":
            kwargs["pin_memory"] = True  # pytorch/examples' CUDA settings
        self.loader = torch.utils.data.DataLoader(PeerPairs(rows, cfg.model_input_size), **kwargs)
        self.iterator = None

    def plan(self, rounds: int) -> list[int]:
        n = len(self.loader)
        return [n] + [0] * (rounds - 1) if self.workers > 0 else slices(n, rounds)

    def begin_epoch(self) -> None:
        self.iterator, self.batch_index, self.loss_sum, self.count, self.seconds = None, 0, 0.0, 0, 0.0

    def train_batches(self, n: int, model=None, optimizer=None, iterator=None) -> None:
        model, optimizer = model or self.model, optimizer or self.optimizer
        model.train()
        started = time.perf_counter()
        if iterator is None:
            if self.iterator is None:
                self.iterator = iter(self.loader)  # starts the workers, as every epoch of the peer does
            iterator = self.iterator
        for _ in range(n):
            images_1, images_2, targets = next(iterator)
            images_1, images_2, targets = images_1.to(self.device), images_2.to(self.device), targets.to(self.device)
            if len(targets) < 2:
                continue  # BatchNorm cannot train on one pair (the project skips it too)
            optimizer.zero_grad()
            outputs = model(images_1, images_2)
            loss = self.criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            if model is self.model:
                self.loss_sum += loss.detach() * len(targets)
                self.count += len(targets)
            if self.batch_index % LOG_INTERVAL == 0:
                loss.item()  # the reference loop prints this every 10 batches (a device sync on CUDA)
            self.batch_index += 1
        _common.sync(self.device)
        if model is self.model:
            self.seconds += time.perf_counter() - started

    def warm_up(self, batches: int) -> None:
        model, optimizer = copy.deepcopy((self.model, self.optimizer))
        loader = torch.utils.data.DataLoader(self.loader.dataset, batch_size=self.cfg.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(12345))
        self.batch_index = 0
        self.train_batches(min(batches, len(loader)), model, optimizer, iter(loader))

    def end_epoch(self) -> None:
        self.iterator = None
        self.epoch_seconds.append(self.seconds)
        self.epoch_pairs.append(len(self.loader.dataset))
        self.train_losses.append(float(self.loss_sum) / max(self.count, 1))

    @torch.no_grad()
    def own_val_loss(self, rows: list) -> float:
        """Val loss through the peer's own pipeline (its Dataset and transforms)."""
        self.model.eval()
        loader = torch.utils.data.DataLoader(PeerPairs(rows, self.cfg.model_input_size), batch_size=128)
        total, count = 0.0, 0
        for images_1, images_2, targets in loader:
            logits = self.model(images_1.to(self.device), images_2.to(self.device)).float().cpu()
            total += float(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum"))
            count += len(targets)
        return total / count


class ProjectRunner(Runner):
    def __init__(self, name: str, cfg: Config, images: torch.Tensor, pairs: np.ndarray, device: torch.device,
                 seed: int, cap: int = 0):
        super().__init__()
        self.name, self.cfg, self.images, self.pairs, self.device, self.capped = name, cfg, images, pairs, device, cap
        torch.manual_seed(seed)
        self.channels_last = cfg.channels_last
        self.model, self.optimizer = model_and_optimizer(cfg, device)  # as engine.fit builds them
        self.generator = torch.Generator().manual_seed(seed)
        # as engine.fit builds it; its capture warms it up (and leaves the weights as they were)
        self.graph = graphed_step(self.model, self.optimizer, images, pairs, cfg, self.generator)

    def plan(self, rounds: int) -> list[int]:
        n = self.capped or len(self.pairs)
        return slices(math.ceil(n / self.cfg.batch_size), rounds)

    def begin_epoch(self) -> None:
        order = torch.randperm(len(self.pairs), generator=self.generator).numpy()
        self.order = self.pairs[order[:self.capped] if self.capped else order]
        self.position, self.loss_sum, self.count, self.seconds = 0, 0.0, 0, 0.0

    def train_batches(self, n: int) -> None:
        if n == 0:
            return
        chunk = self.order[self.position:self.position + n * self.cfg.batch_size]
        self.position += len(chunk)
        started = time.perf_counter()
        loss = train_one_epoch(self.model, self.optimizer, self.images, chunk, self.cfg, self.generator, self.graph)
        _common.sync(self.device)
        self.seconds += time.perf_counter() - started
        self.loss_sum += loss * len(chunk)
        self.count += len(chunk)

    def warm_up(self, batches: int) -> None:
        if self.graph is not None:
            return  # warmed up by its capture
        model, optimizer = copy.deepcopy((self.model, self.optimizer))
        train_one_epoch(model, optimizer, self.images, self.pairs[:batches * self.cfg.batch_size], self.cfg,
                        torch.Generator().manual_seed(12345))
        _common.sync(self.device)

    def end_epoch(self) -> None:
        self.epoch_seconds.append(self.seconds)
        self.epoch_pairs.append(self.count)
        self.train_losses.append(self.loss_sum / max(self.count, 1))


def score(runner: Runner, images: torch.Tensor, val: np.ndarray, base: Config) -> dict[str, float]:
    """Val loss of any runner's model by one evaluator: scoring.predict in fp32 on the cached val arrays."""
    cfg = base.replace(precision="fp32", channels_last=runner.channels_last)
    logits = predict(runner.model, images, val, cfg)
    labels = val[:, 2].astype(np.float64)
    per_pair = np.logaddexp(0, logits) - labels * logits
    return {"loss": float(per_pair.mean()), "se": float(per_pair.std(ddof=1) / math.sqrt(len(per_pair))),
            "accuracy": float(np.mean((logits > 0) == (labels > 0.5)))}


def run_epoch(runners: list[Runner], rounds: int) -> None:
    """One epoch of every runner, interleaved slice by slice."""
    plans = [r.plan(rounds) for r in runners]
    for r in runners:
        r.begin_epoch()
    for k in range(rounds):
        for r, plan in zip(runners, plans):
            r.train_batches(plan[k])
    for r in runners:
        r.end_epoch()


# ------------------------------------------------------------------------------------------------------
# The machine's own matmul rate


def matmul_gflops(dtype: torch.dtype, device: torch.device, size: int) -> tuple[float, int]:
    """GFLOP/s of an n x n @ n x n product after warm-up; n shrinks when one product would take over 2 s
    (bf16 on a CPU without bf16 instructions)."""
    def timed(n: int, min_seconds: float) -> float:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)
        _common.sync(device)
        reps, started = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            reps += 1
            if reps % 5 == 0 or device.type == "cpu":
                _common.sync(device)
                elapsed = time.perf_counter() - started
                if (elapsed >= min_seconds and reps >= 3) or reps >= 500:
                    return 2 * n ** 3 * reps / elapsed

    probe = timed(min(size, 512), 0.2)
    n = size
    if 2 * n ** 3 / probe > 3.0:
        n = max(256, int((probe * 1.0 / 2) ** (1 / 3)) // 64 * 64)
    return timed(n, 0.5) / 1e9, n


# ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    info = _common.machine_info(args.threads)
    print(_common.machine_line(info), flush=True)

    temp: Path | None = None
    if args.data == "synthetic":
        temp = Path(tempfile.mkdtemp(prefix="epoch_vs_peer-"))
        os.environ["TUNE_SIAMESE_CACHE"] = str(temp / "cache")  # keep its decoded copy out of the shared cache
        root = write_synthetic_lfwa(temp / "lfw-a", seed=args.seed)
        source = "synthetic faces as 250 px JPEGs in the LFW-a layout"
    else:
        root = Path(args.data or _common.default_lfw())
        source = f"LFW-a at {root}"
    try:
        return run(args, device, info, root, source, started)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def run(args: argparse.Namespace, device: torch.device, info: dict, root: Path, source: str,
        started: float) -> int:
    base = Config(data=str(root), image_size=args.image_size, width=args.width, batchnorm=True, optimizer="adam",
                  lr=args.lr, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                  device=str(device))
    t0 = time.perf_counter()
    data = load_data(base)
    print(f"{data.summary()} (load {time.perf_counter() - t0:.1f} s)", flush=True)
    paths = lfw_paths(root)
    check_paths(paths, data, base)
    train = data.train
    if args.pairs:
        train = train[np.random.default_rng(args.seed).permutation(len(train))[:args.pairs]]
    n_pairs = len(train)
    rows = [(paths[a], paths[b], int(y)) for a, b, y in train]
    val_rows = [(paths[a], paths[b], int(y)) for a, b, y in data.val]
    for path in {p for row in rows + val_rows for p in row[:2]}:
        path.read_bytes()  # warm page cache: the peer's later epochs read the files from memory too

    workers = ([0, 2] if device.type == "cpu" else [1, 8]) if args.peer_workers == "auto" else \
        [int(w) for w in args.peer_workers.split(",")]
    images = images_on(device, data.images)
    cap = args.bf16_max_pairs if device.type == "cpu" and not cpu_has_native_bf16() else 0
    cap = cap if 0 < cap < n_pairs else 0
    peer_cfg = base.replace(precision="fp32", channels_last=False)
    runners: list[Runner] = [PeerRunner(f"peer (DataLoader workers={w})", peer_cfg, rows, device, w, args.seed)
                             for w in workers]
    project = {
        "project fp32 NCHW": base.replace(precision="fp32", channels_last=False),
        "project fp32 channels_last": base.replace(precision="fp32", channels_last=True),
        "project bf16 autocast channels_last": base.replace(precision="bf16", channels_last=True),
    }
    if device.type == "cuda":  # Config.cuda_graphs: each full batch one CUDA graph replay
        project["project fp32 NCHW CUDA graphs"] = base.replace(precision="fp32", channels_last=False,
                                                                cuda_graphs=True)
        project["project bf16 autocast channels_last CUDA graphs"] = base.replace(precision="bf16",
                                                                                  channels_last=True, cuda_graphs=True)
    runners += [ProjectRunner(name, cfg, images, train, device, args.seed,
                              cap=cap if cfg.precision == "bf16" else 0) for name, cfg in project.items()]
    for r in runners:
        r.warm_up(args.warmup_batches)

    # --- epoch 1 of everything, interleaved ---
    print(f"epoch 1 of {len(runners)} variants, {n_pairs} pairs, interleaved in {args.rounds} rounds ...", flush=True)
    run_epoch(runners, args.rounds)
    for r in runners:
        if not r.capped:
            r.val.append(score(r, images, data.val, base))
        print(f"  {r.name}: {r.seconds_per_epoch(n_pairs):.2f} s/epoch" + (" (extrapolated)" if r.capped else ""),
              flush=True)
    peer = runners[0]
    full = [r for r in runners if isinstance(r, ProjectRunner) and not r.capped]
    best = min(full, key=lambda r: r.seconds_per_epoch(n_pairs))

    # --- epochs 2..E of the reference peer and the fastest project variant ---
    for epoch in range(2, args.epochs + 1):
        print(f"epoch {epoch}: {peer.name} and {best.name} ...", flush=True)
        run_epoch([peer, best], args.rounds if peer.workers == 0 else 1)
        for r in (peer, best):
            r.val.append(score(r, images, data.val, base))
    peer.own_val.append(peer.own_val_loss(val_rows))

    # --- noise: the reference peer and the fastest project variant again with other seeds ---
    peers, bests = [peer], [best]
    for s in range(1, args.noise_seeds + 1):
        seed = args.seed + s
        print(f"seed {seed}: {peer.name} and {best.name} for {args.epochs} epoch(s) ...", flush=True)
        other_peer = PeerRunner(peer.name, peer_cfg, rows, device, peer.workers, seed)
        other = ProjectRunner(best.name, best.cfg.replace(seed=seed), images, train, device, seed)
        for _ in range(args.epochs):
            run_epoch([other_peer, other], args.rounds if peer.workers == 0 else 1)
            for r in (other_peer, other):
                r.val.append(score(r, images, data.val, base))
        other_peer.own_val.append(other_peer.own_val_loss(val_rows))
        peers.append(other_peer)
        bests.append(other)

    # --- matmul ceilings and FLOP counts ---
    mm_size = args.mm_size or (8192 if device.type == "cuda" else 2048)
    mm = {name: matmul_gflops(dtype, device, mm_size) for name, dtype in (("fp32", torch.float32),
                                                                           ("bf16", torch.bfloat16))}
    fwd = flop_count(build_model(base).eval().embed, torch.zeros(1, 1, base.model_input_size, base.model_input_size))
    flops_per_pair = 3 * 2 * fwd

    # --- report ---
    peer_time = peer.seconds_per_epoch(n_pairs, slice(0, 1))
    table = []
    for r in runners:
        secs = r.seconds_per_epoch(n_pairs, slice(0, 1))
        gflops = flops_per_pair * r.epoch_pairs[0] / r.epoch_seconds[0] / 1e9
        ceiling = mm["bf16" if getattr(r, "cfg", base).precision == "bf16" and isinstance(r, ProjectRunner)
                     else "fp32"][0]
        val1 = f"{r.val[0]['loss']:.4f} ± {r.val[0]['se']:.4f}" if r.val else "—"
        table.append([r.name + (" *" if r.capped else ""), f"{secs:.2f}", f"{secs / peer_time:.3f}",
                      f"{peer_time / secs:.2f}×", f"{r.epoch_pairs[0] / r.epoch_seconds[0]:.1f}", f"{gflops:.2f}",
                      f"{100 * gflops / ceiling:.1f} %", val1])

    def mean_epoch(group: list[Runner]) -> float:
        return sum(r.seconds_per_epoch(n_pairs) for r in group) / sum(len(r.epoch_seconds) for r in group)

    mean_peer, mean_best = mean_epoch(peers), mean_epoch(bests)
    seeds = list(range(args.seed, args.seed + args.noise_seeds + 1))
    peer_losses, best_losses = [r.val[-1]["loss"] for r in peers], [r.val[-1]["loss"] for r in bests]
    m_peer, sd_peer = _common.mean_sd(peer_losses)
    m_best, sd_best = _common.mean_sd(best_losses)
    n = len(seeds)
    diff = m_peer - m_best
    if n > 1:
        se_diff = math.sqrt((sd_peer ** 2 + sd_best ** 2) / n)
        verdict = (f"difference of the means {diff:+.4f} ± {se_diff:.4f} (s.e.), i.e. {abs(diff) / se_diff:.1f} s.e.: "
                   + ("within noise (< 2 s.e.)" if abs(diff) < 2 * se_diff else "NOT within noise (≥ 2 s.e.)"))
    else:
        verdict = (f"difference {diff:+.4f}; one seed only (--noise-seeds 0), so only the evaluation s.e. of one "
                   f"val loss, ≈ {best.val[-1]['se']:.4f}, is known")
    quality = [[f"{r.name}, seed {seed}", *(f"{v['loss']:.4f}" for v in r.val), f"{r.val[-1]['accuracy']:.3f}",
                f"{r.own_val[-1]:.4f}" if r.own_val else "—"]
               for group in (peers, bests) for seed, r in zip(seeds, group)]
    body = "\n".join([
        f"- data: {source}; {n_pairs} training pairs per epoch"
        + (f" (seeded subset of {len(data.train)})" if args.pairs else " (all DevTrain pairs after the val split)")
        + f", {len(data.val)} val pairs (identity-disjoint); image {args.image_size} px",
        f"- model: Koch net width {args.width} (BatchNorm, Koch init), Adam lr {args.lr}, batch {args.batch_size}, "
        f"seed {args.seed}; device {device}; {args.threads} torch threads",
        f"- peer: Dataset opening both JPEGs per item (PIL + torchvision Grayscale/Resize/ToTensor), DataLoader "
        f"(shuffle, batch {args.batch_size}{', pin_memory' if device.type == 'cuda' else ''}), fp32 NCHW, "
        f"loss.item() every {LOG_INTERVAL} batches; workers {', '.join(map(str, workers))} "
        f"(reference: {workers[0]}, pytorch/examples' siamese_network setting on {device.type})",
        f"- FLOPs: forward {fwd / 1e6:.1f} MFLOP per image (training.costs.flop_count of the embedding); training counted as 3 × forward "
        f"× 2 images per pair = {flops_per_pair / 1e6:.1f} MFLOP per pair",
        f"- matmul ceiling (torch.mm, same process and threads): fp32 {mm['fp32'][0]:.1f} GFLOP/s "
        f"(n={mm['fp32'][1]}), bf16 {mm['bf16'][0]:.2f} GFLOP/s (n={mm['bf16'][1]}); 'of mm ceiling' compares each row with the fp32 product, the bf16 row with the bf16 one",
        f"- epoch 1 of all variants interleaved in {args.rounds} rounds after {args.warmup_batches} warm-up batches"
        + (f"; * bf16 trained {cap} pairs and was extrapolated (no native bf16 on this CPU)" if cap else ""),
        "",
        _common.md_table(["variant", "s/epoch", "time ÷ peer", "speed-up vs peer", "pairs/s", "train GFLOP/s",
                          "of mm ceiling", "val loss after epoch 1 (± s.e.)"], table),
        "",
        f"Mean over all epochs and seeds ({n} seed(s) × {args.epochs} epoch(s), interleaved the same way): peer "
        f"{mean_peer:.2f} s/epoch, {best.name} {mean_best:.2f} s/epoch → speed-up {mean_peer / mean_best:.2f}×.",
        "",
        f"Val loss after each epoch, seeds {seeds[0]}..{seeds[-1]} (one evaluator: scoring.predict, fp32, cached val "
        "arrays; the last column scores the peer through its own JPEG pipeline)"
        + (" — on CUDA runs are not bit-reproducible (cuDNN), so even equal seeds differ" if device.type == "cuda"
           else "") + ":",
        "",
        _common.md_table(["model", *(f"epoch {e}" for e in range(1, args.epochs + 1)), "val accuracy",
                          "peer pipeline val loss"], quality),
        "",
        f"After {args.epochs} epoch(s): peer {m_peer:.4f} ± {sd_peer:.4f}, {best.name} {m_best:.4f} ± {sd_best:.4f} "
        f"(mean ± s.d. over {n} seed(s)); {verdict}.",
    ])
    _common.record("epoch_vs_peer", body, info, started, enabled=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
