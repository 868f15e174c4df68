"""``cxr phantom``, ``cxr stats``, ``cxr cache``: datasets."""
from __future__ import annotations

import json

from .common import Command, add_filter_flags, bar
from .common import views as parse_views


def cmd_phantom(a) -> int:
    from ..data.phantom import generate

    if a.pairs:
        from ..data.phantom.pairs import PAIRS_FILE, generate_pairs
        from ..errors import ConfigError

        if a.label_noise:
            raise ConfigError("--label-noise flips labels of a phantom dataset, not of --pairs: use one of them.")
        out = generate_pairs(a.out, a.n, domain=a.domain, size=a.size, seed=a.seed, workers=a.workers,
                             progress=bar("pairs"))
        print(f"wrote {a.n} prior / current pairs ({a.domain} layout) to {out}; the truth of each in {out / PAIRS_FILE}")
        return 0
    out = generate(a.out, a.n, domain=a.domain, size=a.size, seed=a.seed, workers=a.workers, progress=bar("phantom"))
    print(f"wrote {a.n} {a.domain} phantom images to {out}")
    if a.label_noise:
        from ..data.phantom.noise import NOISE_FILE, add_label_noise

        flipped = add_label_noise(out, a.label_noise, a.noise_seed)
        print(f"flipped {len(flipped)} (film, finding) labels; the truth of each is in {out / NOISE_FILE}")
    return 0


def cmd_stats(a) -> int:
    from ..data import stats
    from ..data.readers import LABELS_ONLY, builtin_table, read_dataset

    from ..data.filters import apply_filters

    index = (builtin_table(a.source[len("builtin:"):]) if a.source.startswith("builtin:")
             else read_dataset(a.source, a.format, check_files=LABELS_ONLY))  # a table without images: its labels
    n_before = len(index)
    index, report = apply_filters(index, frontal_only=a.frontal_only, views=parse_views(a.views),
                                  first_n_studies=a.first_n_studies, age_min=a.age_min, age_max=a.age_max, sex=a.sex,
                                  sample_n=a.sample_n, seed=a.seed)
    info = stats.summary(index)
    prev = stats.prevalence(index)
    if a.json:
        print(json.dumps({"summary": info, "filters": {"before": n_before, "removed": report, "after": len(index)},
                          "prevalence": json.loads(prev.reset_index().to_json(orient="records"))},
                         indent=1, default=str))
        return 0
    if report:
        print(f"filters: {n_before:,} images before; "
              + "; ".join(f"{name} removed {n:,}" for name, n in report.items()) + f"; {len(index):,} left")
    print(f"{info['name']} ({info['format']}): {info['images']:,} images, {info['patients']:,} patients, "
          f"{info['images_on_disk']:,} image files found on disk")
    for note in info.get("notes", []):
        print(f"  note: {note}")
    print(prev.round(2).to_string())
    return 0


def cmd_cache(a) -> int:
    from ..data.cache import build_cache
    from ..data.preprocess import Preprocess
    from ..data.readers import read_dataset

    index = read_dataset(a.data, a.format)
    cache = build_cache(index, Preprocess(size=a.size, fit=a.fit), progress=bar("cache"), workers=a.workers)
    print(f"cache of {len(cache):,} images at {a.size} px in {cache.folder}"
          + (f"; {len(cache.failed)} unreadable (left black, excluded from training)" if cache.failed else ""))
    return 0



def _phantom_flags(s) -> None:
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--domain", choices=["nih", "chexpert"], default="nih")
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--label-noise", type=float, default=0.0,
                   help="flip this share of the (film, finding) labels (NIH layout; the truth in label_noise.csv)")
    s.add_argument("--noise-seed", type=int, default=0, help="seeds the flips")
    s.add_argument("--pairs", action="store_true",
                   help="write N prior / current pairs of one patient each with a known change per finding "
                        "(pairs.csv: prior, current, label, change)")
    s.set_defaults(func=cmd_phantom)


def _stats_flags(s) -> None:
    s.add_argument("source", help="a dataset folder, or builtin:nih / builtin:chexpert (full tables in torchxrayvision)")
    s.add_argument("--format", choices=["auto", "nih", "chexpert"], default="auto")
    s.add_argument("--json", action="store_true")
    add_filter_flags(s, frontal_default=False)
    s.add_argument("--sample-n", type=int, help="random sample of this many images, after the filters")
    s.add_argument("--seed", type=int, default=0, help="seed of --sample-n")
    s.set_defaults(func=cmd_stats)


def _cache_flags(s) -> None:
    s.add_argument("data")
    s.add_argument("--size", type=int, default=160)
    s.add_argument("--fit", choices=["pad", "crop"], default="pad")
    s.add_argument("--format", choices=["auto", "nih", "chexpert"], default="auto")
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_cache)


PHANTOM = Command("phantom", "write a procedural chest X-ray dataset in the NIH or CheXpert layout", _phantom_flags)
STATS = Command("stats", "label statistics of a dataset folder or a builtin table", _stats_flags)
CACHE = Command("cache", "build the uint8 image cache training reads (once per dataset and size)", _cache_flags)
