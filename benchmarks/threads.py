"""Two torch jobs at once on a small machine: alone vs side by side, at a given thread count each.

    python benchmarks/threads.py [--threads 1 2] [--steps 150]

Each job is a fresh interpreter running ``steps`` SGD steps of a small CNN (batch 64, 32x32, the
retrain model's size) with ``torch.set_num_threads(t)``. For every ``t`` it prints the wall time of
one job alone and of each of two started together, and the slowdown (side by side / alone): what
``dvc queue start -j 2`` workers, or two pipelines, see on this machine at that thread count.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

JOB = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10),
)
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x, y = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))
start = time.perf_counter()
for _ in range(int(sys.argv[2])):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
print(time.perf_counter() - start)
"""


def jobs(n: int, threads: int, steps: int) -> list[float]:
    """Seconds of the training loop in each of ``n`` jobs started together."""
    procs = [
        subprocess.Popen([sys.executable, "-c", JOB, str(threads), str(steps)], stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    return [float(p.communicate()[0]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    print(f"{'threads':>7} {'alone s':>8} {'side by side s':>16} {'slowdown':>9}")
    for t in args.threads:
        time.sleep(1)
        (alone,) = jobs(1, t, args.steps)
        pair = jobs(2, t, args.steps)
        print(f"{t:>7} {alone:>8.2f} {pair[0]:>7.2f} {pair[1]:>7.2f}  {max(pair) / alone:>8.2f}x")


if __name__ == "__main__":
    main()
