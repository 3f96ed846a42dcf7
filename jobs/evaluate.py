"""Evaluation tables: ``python -m jobs.evaluate --root ROOT --stage selection``.

``selection``: the paper's Table 3 on the test split: rows random / img / text / img+text (the latest DPP models),
columns Prec@3, Recall@3, F1@3, Div@3 (in %), next to the paper's numbers. Written as JSON and Markdown under
``ROOT/reports/evaluate/``.
"""

from __future__ import annotations

import sys

from showcase_core.store import StoreError, new_run_id, utc_now, write_bytes_atomic

from .common import UserError, new_report, open_store, parse_args, run, versions

DEFAULTS = {"root": None, "stage": "selection", "split": "test", "k": 3, "seed": 0}
STAGES = ("selection",)
PAPER_TABLE3 = {  # Table 3 of the paper, in %
    "random": {"precision": 4.87, "recall": 6.14, "f1": 5.43, "div": 30.24},
    "img": {"precision": 25.21, "recall": 34.05, "f1": 28.97, "div": 17.12},
    "text": {"precision": 15.28, "recall": 20.58, "f1": 17.54, "div": 18.68},
    "img+text": {"precision": 25.21, "recall": 34.37, "f1": 29.09, "div": 17.07},
}


def selection_table(store, split: str, k: int, seed: int) -> dict:
    from showcase_core.selection.kernel import load_dpp
    from showcase_core.selection.training import evaluate_picks, random_picks, select

    from .train_dpp import load_selection_data

    try:
        latest = store.read_json("models/dpp/_LATEST.json")
    except StoreError:
        raise UserError(f"no trained DPP under {store.root}/models/dpp (run `showcase train_dpp`)") from None
    data = load_selection_data(store.root, latest["encoder_id"], max_ground=10**9, seed=seed, splits=(split,))
    examples = data.splits[split]
    if not len(examples):
        raise UserError(f"no {split}-split examples with embedded photos")
    rows = {"random": evaluate_picks(data, examples, random_picks(examples, k, seed), k)}
    for modality in sorted(latest["models"], key=lambda m: list(PAPER_TABLE3).index(m) if m in PAPER_TABLE3 else 99):
        model, _ = load_dpp(latest["models"][modality])
        rows[modality] = evaluate_picks(data, examples, select(model, data, examples, k), k)
    return {"split": split, "k": k, "examples": len(examples), "skipped": data.skipped[split],
            "encoder_id": latest["encoder_id"], "dpp_version": latest["version"],
            "rows": [{"method": name, **row, "paper": PAPER_TABLE3.get(name)} for name, row in rows.items()]}


def selection_markdown(table: dict) -> str:
    k = table["k"]
    lines = [f"Table 3: personalized image selection on the {table['split']} split "
             f"({table['examples']:,} (user, business) pairs), in %. Paper's numbers in brackets.", "",
             f"| method | Prec@{k} | Recall@{k} | F1@{k} | Div@{k} |", "|---|---:|---:|---:|---:|"]
    for row in table["rows"]:
        name, paper = row["method"], row["paper"] or {}
        cells = [f"{100 * row[m]:.2f} ({paper[m]:.2f})" if m in paper else f"{100 * row[m]:.2f}"
                 for m in ("precision", "recall", "f1", "div")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    f1 = {r["method"]: r["f1"] for r in table["rows"]}
    order = " > ".join(sorted(f1, key=f1.get, reverse=True))
    lines += ["", f"F1 order here: {order}; in the paper: img+text > img > text > random."]
    if "img+text" in f1 and f1["random"] > 0:
        lines.append(f"img+text F1@{k} is {f1['img+text'] / f1['random']:.2f}x random (paper: 5.36x).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("evaluate", DEFAULTS, argv)
    stages = STAGES if cfg["stage"] == "all" else (cfg["stage"],)
    if set(stages) - set(STAGES):
        raise UserError(f"--stage must be one of {', '.join(STAGES)} or all, got {cfg['stage']!r}")
    store = open_store(cfg["root"])
    run_id = new_run_id()
    report = new_report("evaluate", cfg, run_id)
    outputs = {}
    for stage in stages:
        table = selection_table(store, cfg["split"], cfg["k"], cfg["seed"])
        markdown = selection_markdown(table)
        report[stage] = table
        rel = f"reports/evaluate/{stage}-{run_id}.md"
        write_bytes_atomic(store.fs, store.path(rel), (markdown + "\n").encode())
        outputs[stage] = {"markdown": store.uri(rel)}
        print(markdown)
    report.update(outputs=outputs, versions=versions(), finished_at=utc_now())
    uri = store.write_json(f"reports/evaluate/{run_id}.json", report)
    print(f"\nreport: {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(run("evaluate", main))
