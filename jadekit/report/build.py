"""`jadekit report`: compute what a run learned and write it as Markdown + PNGs + one self-contained HTML."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jadekit.evaluation import LoadedRun, load_run, own_test_sets, trained_steps
from jadekit.io import atomic_write_json, atomic_write_text, read_json_object, read_jsonl
from jadekit.report import figures
from jadekit.report.latents import decode, encode, linear_probe, normalised, pca2
from jadekit.trainer import plugin_code_failures


@dataclass
class Report:
    """What was written: figure name → PNG path, probe scores, the text files, and which weights (`LoadedRun.weights`)."""

    out_dir: Path
    weights: dict = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    probes: dict[str, dict[str, float]] = field(default_factory=dict)
    markdown: Path | None = None
    html: Path | None = None


def _subsample(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[: min(n, k)].sort().values


def build_report(run_dir: Path, out_dir: Path | None = None, device: str | torch.device = "cpu",
                 max_samples: int = 1000, seed: int = 0) -> Report:
    """Build every figure that applies to the run's method (all of them for jade)."""
    run = load_run(run_dir, device=device)
    with plugin_code_failures(run.resolved, lambda: f"building the report of {run.run_dir}"):  # the encoders run here
        return _build(run, out_dir, max_samples, seed)


def _build(run: LoadedRun, out_dir: Path | None, max_samples: int, seed: int) -> Report:
    out = Path(out_dir) if out_dir else run.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out, run.weights)
    records = list(read_jsonl(run.run_dir / "metrics.jsonl"))
    if records:
        rep.figures["curves"] = figures.training_curves(records, out / "curves.png")
        rep.captions["curves"] = "Training curves: every loss term per step, and validation accuracy."

    sets = {s.domain: s for s in own_test_sets(run)}
    picked = {d: _subsample(len(s.data), max_samples, seed) for d, s in sets.items()}
    x = {d: sets[d].data.images[picked[d]] for d in sets}
    y = {d: sets[d].data.labels[picked[d]] for d in sets}
    z = {d: encode(run.model, x[d], d, run.device) for d in sets}
    names = {d: s.dataset for d, s in sets.items()}
    if len(set(names.values())) < len(names):  # same dataset on both sides: tell them apart
        names = {d: f"{n} ({d})" for d, n in names.items()}
    is_jade = run.method == "jade"
    c = run.resolved.recipe.model.content_dim
    content = {d: z[d][:, :c] if is_jade else z[d] for d in sets}
    what = "content latents" if is_jade else "bottleneck features"

    groups = _probe_groups({d: s.data.groups for d, s in sets.items()}, picked)
    _probes(rep, run, content, z, y, groups, names, is_jade, c, seed)
    rep.figures["probes"] = figures.probe_bars(rep.probes, out / "probes.png")
    rep.captions["probes"] = ("Linear probes (logistic regression, trained on one half of the test latents, scored on the "
                              "other" + (", whole groups (e.g. patients) in each half" if groups else "") + "); dashed: "
                              "chance.")
    domains = list(sets)
    all_content = torch.cat([content[d] for d in domains])
    xy, share = pca2(all_content)
    labels = torch.cat([y[d] for d in domains])
    origin = torch.cat([torch.full((len(y[d]),), i) for i, d in enumerate(domains)])
    rep.figures["pca"] = figures.pca_scatter(xy, share, labels, run.resolved.class_names, origin,
                                             [names[d] for d in domains], what, out / "pca.png")
    rep.captions["pca"] = f"2-D PCA of the {what} of test images, coloured by class (and by dataset of origin when there are two)."
    if is_jade:
        _jade_figures(rep, run, x, y, z, c, seed)
    _write(rep, run)
    return rep


def _probe_groups(groups: dict, picked: dict) -> dict | None:
    """Each domain's group ids (e.g. patients) of the picked images, made distinct across domains (an image without a
    group is its own); None when no domain has groups."""
    if all(g is None for g in groups.values()):
        return None
    out, offset = {}, 0
    for d, idx in picked.items():
        ids = torch.unique(groups[d][idx], return_inverse=True)[1] if groups[d] is not None else torch.arange(len(idx))
        out[d] = ids + offset
        offset += int(ids.max()) + 1 if len(ids) else 0
    return out


def _probes(rep: Report, run: LoadedRun, content: dict, z: dict, y: dict, groups: dict | None, names: dict,
            is_jade: bool, c: int, seed: int) -> None:
    """Class from content (and style), dataset-of-origin from content (balanced so chance is 1/2); with groups, whole
    groups on each side of a probe's split."""
    domains = list(content)
    feats = torch.cat([content[d] for d in domains])
    labels = torch.cat([y[d] for d in domains])
    ids = torch.cat([groups[d] for d in domains]) if groups else None
    key = "content" if is_jade else "features"
    rep.probes[f"class from {key}"] = linear_probe(feats, labels, seed, groups=ids)
    if is_jade:
        style = torch.cat([z[d][:, c:] for d in domains])
        rep.probes["class from style"] = linear_probe(style, labels, seed, groups=ids)
    if len(domains) == 2:
        n = min(len(y[d]) for d in domains)
        balanced = torch.cat([content[d][:n] for d in domains])
        origin = torch.cat([torch.full((n,), i) for i in range(2)])
        rep.probes[f"dataset from {key}"] = linear_probe(balanced, origin, seed,
                                                         groups=torch.cat([groups[d][:n] for d in domains]) if groups else None)


def _jade_figures(rep: Report, run: LoadedRun, x: dict, y: dict, z: dict, c: int, seed: int) -> None:
    out, model, dev = rep.out_dir, run.model, run.device
    likelihood = run.resolved.recipe.loss.likelihood
    zp, yp = normalised(z["primary"]), y["primary"]
    n_rows = 12
    panels = []
    for k, name in enumerate(run.resolved.class_names):
        idx = (yp == k).nonzero().flatten()[:n_rows]
        if len(idx):
            panels.append((f"class {name}", zp[idx]))
    g = torch.Generator().manual_seed(seed)
    panels.append(("random samples, all classes", zp[torch.randperm(len(zp), generator=g)[:n_rows]]))
    rep.figures["fig2"] = figures.latent_heatmaps(panels, c, out / "fig2_activations.png")
    rep.captions["fig2"] = (f"Fig. 2 reproduction ({run.resolved.primary.name} test images): each latent dim divided by its "
                            f"std over all test samples; rows are samples of one class, or random samples.")
    within = torch.stack([zp[yp == k].var(0) for k in range(len(run.resolved.class_names)) if (yp == k).sum() > 1]).mean(0)
    rep.figures["fig2_variance"] = figures.dim_variance(within, c, out / "fig2_within_class_variance.png")
    rep.captions["fig2_variance"] = "Within-class variance of each normalised latent dim: low for content, near 1 for style."

    n = 8
    pairs = []
    for d in x:
        r = decode(model, z[d][:n], d, likelihood, dev)
        pairs.append((getattr(run.resolved, d).name + f" ({d})", x[d][:n].float() / 255, r))
    rep.figures["reconstructions"] = figures.reconstructions(pairs, out / "reconstructions.png")
    rep.captions["reconstructions"] = "Test images and their reconstructions from the posterior mean."

    m = 6
    xp, xa = x["primary"][:m].float() / 255, x["auxiliary"][:m].float() / 255
    zp_raw, za_raw = z["primary"][:m], z["auxiliary"][:m]
    p_name, a_name = run.resolved.primary.name, run.resolved.auxiliary.name
    swaps = []
    for (cn, cx, cz), (sn, sx, sz) in (((p_name, xp, zp_raw), (a_name, xa, za_raw)), ((a_name, xa, za_raw), (p_name, xp, zp_raw))):
        mixed_z = torch.cat([cz[:, None, :c].expand(-1, len(sz), -1), sz[None, :, c:].expand(len(cz), -1, -1)], dim=2)
        for dec in ("primary", "auxiliary"):
            img = decode(model, mixed_z.reshape(-1, mixed_z.shape[-1]), dec, likelihood, dev)
            dn = getattr(run.resolved, dec).name
            swaps.append((f"content {cn} x style {sn} → {dn} decoder", cx, sx, img.reshape(len(cz), len(sz), *img.shape[1:])))
    rep.figures["swaps"] = figures.swap_grid(swaps, out / "swaps.png")
    rep.captions["swaps"] = ("Style/content swaps: z = [content of the left image, style of the top image], decoded by "
                             "each dataset's decoder.")


TITLES = {
    "curves": "Training curves",
    "probes": "Linear probes",
    "pca": "PCA of the latent space",
    "fig2": "Fig. 2: normalised latent activations",
    "fig2_variance": "Fig. 2: within-class variance per latent dim",
    "reconstructions": "Reconstructions",
    "swaps": "Style/content swaps",
}


def _table(rep: Report) -> list[str]:
    lines = ["| probe | held-out accuracy | chance | n (train / test) |", "| --- | --- | --- | --- |"]
    for name, p in rep.probes.items():
        if math.isnan(p["accuracy"]):  # whole groups (patients) on each side, and too few of them
            acc, chance = "- (too few groups to hold out)", "-"
        else:
            acc, chance = f"{p['accuracy']:.3f}", f"{p['chance']:.3f}"
        lines.append(f"| {name} | {acc} | {chance} | {p['n_train']} / {p['n_test']} |")
    return lines


def _write(rep: Report, run: LoadedRun) -> None:
    title = f"jadekit report: {run.resolved.recipe.experiment.name} / {run.method} / seed {run.seed}"
    md = [f"# {title}", ""]
    w = run.weights
    unfinished = "" if w["finished"] else f" **Unfinished run: {trained_steps(w)}.**"
    md += [f"Weights of step {w['step']} ({w['selected']}).{unfinished}", ""]
    f = read_json_object(run.run_dir / "final.json")  # {} when missing or damaged: the line is left out
    if isinstance(primary := f.get("primary_test_error"), int | float):
        aux = f.get("auxiliary_test_error")
        md += [f"Primary test error {primary:.2f}%"
               + (f", auxiliary {aux:.2f}%" if isinstance(aux, int | float) else "") + f"; best step {f.get('best_step')}.", ""]
    md += ["## Probe scores", "", *_table(rep), ""]
    for key, path in rep.figures.items():
        md += [f"## {TITLES.get(key, key)}", "", rep.captions.get(key, ""), "", f"![{key}]({path.name})", ""]
    rep.markdown = rep.out_dir / "report.md"
    atomic_write_text(rep.markdown, "\n".join(md))
    atomic_write_json(rep.out_dir / "report.json", {"run_dir": str(run.run_dir), "method": run.method, "weights": w,
                                                    "probes": rep.probes,
                                                    "figures": {k: p.name for k, p in rep.figures.items()}})
    rep.html = rep.out_dir / "report.html"
    atomic_write_text(rep.html, to_html("\n".join(md), rep))


def to_html(markdown: str, rep: Report) -> str:
    """A minimal Markdown → HTML rendering (headings, tables, images inlined as base64)."""
    body, table = [], []

    def flush() -> None:
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|[\s\-|]+\|", r)]
            cells = [[html.escape(c.strip()) for c in r.strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            rest = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
            body.append(f"<table><tr>{head}</tr>{rest}</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if m := re.fullmatch(r"!\[(.*)\]\((.*)\)", line):
            data = base64.b64encode((rep.out_dir / m.group(2)).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;} img{max-width:100%;} "
             "table{border-collapse:collapse;} td,th{border:1px solid #ccc;padding:3px 8px;}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>jadekit report</title><style>{style}</style></head>" \
           f"<body>{''.join(body)}</body></html>\n"
