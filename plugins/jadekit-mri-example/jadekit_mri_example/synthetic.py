"""Synthetic MRI-like cohorts for tests and demos: `python -m jadekit_mri_example.synthetic ROOT`.

Each patient is a noisy ellipsoid "organ" in a volume; patients of the `lesion` class carry a
bright blob inside it. Two cohorts with different contrast and size stand in for a scarce
pancreas-like and an abundant breast-like dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = ("healthy", "lesion")


def volume(rng: np.random.Generator, lesion: bool, shape: tuple[int, int, int], contrast: float) -> np.ndarray:
    """One synthetic volume (float32)."""
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij"))
    radii = rng.uniform(0.5, 0.8, size=3)[:, None, None, None]
    organ = (((grid / radii) ** 2).sum(0) < 1).astype(np.float32) * contrast
    if lesion:
        centre = rng.uniform(-0.3, 0.3, size=3)[:, None, None, None]
        organ += (((grid - centre) ** 2).sum(0) < rng.uniform(0.02, 0.05)).astype(np.float32) * 2 * contrast
    return organ + rng.normal(0, 0.3, size=shape).astype(np.float32)


def write_cohort(folder: Path, n_patients: int, *, shape: tuple[int, int, int] = (40, 40, 12), contrast: float = 1.0,
                 fmt: str = "npz", seed: int = 0) -> list[Path]:
    """Write `n_patients` per class under `folder/<class>/patient-XXX.<fmt>` (fmt: npz, npy or nii.gz)."""
    rng = np.random.default_rng(seed)
    written = []
    for label, c in enumerate(CLASSES):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_patients):
            v = volume(rng, bool(label), shape, contrast)
            path = folder / c / f"patient-{label}{i:03d}.{fmt}"
            if fmt == "npz":
                np.savez_compressed(path, volume=v)
            elif fmt == "npy":
                np.save(path, v)
            else:
                import nibabel

                nibabel.save(nibabel.Nifti1Image(v, np.eye(4)), path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="data root; writes ROOT/pancreas-synth and ROOT/breast-synth")
    parser.add_argument("--scarce", type=int, default=8, help="patients per class of the scarce cohort")
    parser.add_argument("--abundant", type=int, default=40, help="patients per class of the abundant cohort")
    args = parser.parse_args(argv)
    write_cohort(args.root / "pancreas-synth", args.scarce, contrast=0.8, seed=1)
    write_cohort(args.root / "breast-synth", args.abundant, shape=(48, 48, 10), contrast=1.2, seed=2)
    print(f"wrote {args.root / 'pancreas-synth'} and {args.root / 'breast-synth'}")


if __name__ == "__main__":
    main()
