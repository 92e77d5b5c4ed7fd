"""Write the CIFAR-100 benchmark configs: configs/cifar100/<teacher>_<student>/<method>.yaml.

One YAML per (pair, method), all with the standard recipe of the RepDistiller / mdistiller
CIFAR-100 tables. Edit this script, not the YAML files, then run it again:

    python configs/cifar100/generate.py          # (re)writes every YAML next to this script
    python configs/cifar100/generate.py --check  # fails if a YAML differs from what it would write
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

# (teacher, student); ResNet50 of the table is the CIFAR-stem variant (3x3 stem, no max-pool).
PAIRS = [
    ({"name": "resnet32x4"}, {"name": "resnet8x4"}),
    ({"name": "wrn_40_2"}, {"name": "wrn_16_2"}),
    ({"name": "resnet56"}, {"name": "resnet20"}),
    ({"name": "vgg13"}, {"name": "vgg8"}),
    ({"name": "resnet50", "params": {"cifar_stem": True}}, {"name": "mobilenetv2"}),
]
LIGHT_STUDENTS = {"mobilenetv2", "shufflenetv1", "shufflenetv2"}  # trained with lr 0.01

# FSP compares Gram matrices of consecutive layers, so teacher and student widths must match.
FSP_SKIPPED = {"resnet50_mobilenetv2": "ResNet50 stage widths 64/256/512/1024/2048 vs MobileNetV2's differ"}

# DKD's beta per pair, from mdistiller's configs/cifar100/dkd/*.yaml (default 8).
DKD_BETA = {"wrn_40_2_wrn_16_2": 6.0, "resnet56_resnet20": 2.0, "vgg13_vgg8": 6.0}
# ReviewKD's weight: mdistiller's reviewkd.yaml (resnet32x4->resnet8x4) sets 5; its default is 1.
REVIEWKD_WEIGHT = {"resnet32x4_resnet8x4": 5.0}


def ce(w: float = 1.0) -> dict:
    return {"name": "ce", "weight": w}


def methods_for(pair: str) -> dict[str, tuple[list[dict], str]]:
    """method -> (methods list, where its weights come from)."""
    rep = "RepDistiller train_student.py"
    return {
        "ce": ([ce()], "The student trained alone with CE (the baseline)"),
        "kd": ([ce(0.1), {"name": "kd", "weight": 0.9, "tau": 4.0}], f"{rep}: -r 0.1 -a 0.9, T 4; mdistiller kd.yaml"),
        "dkd": ([ce(), {"name": "dkd", "weight": 1.0, "alpha": 1.0, "beta": DKD_BETA.get(pair, 8.0), "tau": 4.0,
                        "warmup": 20}], "mdistiller dkd/<pair>.yaml: CE 1, alpha 1, beta per pair, T 4, warm-up 20"),
        "dist": ([ce(), {"name": "dist", "weight": 1.0, "beta": 2.0, "gamma": 2.0, "tau": 4.0}],
                 "DIST paper, CIFAR-100: beta 2, gamma 2, tau 4, with CE 1"),
        "ctkd": ([ce(0.1), {"name": "ctkd", "weight": 0.9}],
                 "CTKD official code (on RepDistiller's KD: -r 0.1 -a 0.9), tau in (1, 21), lambda 0->1 over 10 epochs"),
        "fitnet": ([ce(), {"name": "fitnet", "weight": 100.0}], f"{rep}: --distill hint -b 100"),
        "at": ([ce(), {"name": "at", "weight": 1000.0}], f"{rep}: --distill attention -b 1000"),
        "sp": ([ce(), {"name": "sp", "weight": 3000.0}], f"{rep}: --distill similarity -b 3000"),
        "cc": ([ce(), {"name": "cc", "weight": 1.0}],
               "no reference weight: RepDistiller's -b 0.02 is for its simplified CC loss, not the paper's used here"),
        "vid": ([ce(), {"name": "vid", "weight": 1.0}], f"{rep}: --distill vid -b 1"),
        "rkd": ([ce(), {"name": "rkd", "weight": 1.0}], f"{rep}: --distill rkd -b 1 (distance 25, angle 50)"),
        "pkt": ([ce(), {"name": "pkt", "weight": 30000.0}], f"{rep}: --distill pkt -b 30000"),
        "ab": ([ce(), {"name": "ab", "weight": 1.0}],
               f"{rep}: --distill abound -b 1, there as a 30-epoch init stage; here an ordinary loss for all epochs"),
        "ft": ([ce(), {"name": "ft", "weight": 200.0}], f"{rep}: --distill factor -b 200"),
        "fsp": ([ce(), {"name": "fsp", "weight": 50.0}],
                f"{rep}: --distill fsp -b 50, there as a 30-epoch init stage; here an ordinary loss for all epochs"),
        "nst": ([ce(), {"name": "nst", "weight": 50.0}], f"{rep}: --distill nst -b 50"),
        "crd": ([ce(), {"name": "crd", "weight": 0.8}], f"{rep}: --distill crd -b 0.8 (nce_k 16384, T 0.07, feat_dim 128)"),
        "reviewkd": ([ce(), {"name": "reviewkd", "weight": REVIEWKD_WEIGHT.get(pair, 1.0), "warmup_epochs": 20}],
                     "mdistiller: CE 1, REVIEWKD_WEIGHT 5 (resnet32x4->resnet8x4 config) else 1, warm-up 20"),
        "ofd": ([ce(), {"name": "ofd", "weight": 1.0}], "mdistiller OFD: CE 1, feature weight 1e-3 (= ofd's `scale`)"),
    }


def recipe(lr: float) -> dict:
    return {
        "epochs": 240,
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5.0e-4},
        "schedule": {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1},
    }


DATA = {"name": "cifar100", "params": {"path": "data/cifar-100-python"}, "batch_size": 64}


def pair_dir(t: dict, s: dict) -> str:
    return f"{t['name']}_{s['name']}"


def experiment(t: dict, s: dict, method: str) -> tuple[dict, str]:
    pair = pair_dir(t, s)
    lr = 0.01 if s["name"] in LIGHT_STUDENTS else 0.05
    if method == "teacher":  # the teacher alone, 3 seeds: the table's teacher column
        return ({"name": f"cifar100-{pair}-teacher", "seeds": [0, 1, 2], "device": "auto", "data": DATA,
                 "student": t, "methods": [ce()], "train": recipe(0.05)},
                "The teacher trained alone with CE (the table's teacher column)")
    methods, source = methods_for(pair)[method]
    exp = {"name": f"cifar100-{pair}-{method}", "seeds": [0, 1, 2], "device": "auto", "data": DATA}
    if method != "ce":
        # Trained once as a first stage (seed 0, lr 0.05) and reused from the store by every
        # method of the pair; `teacher.checkpoint=...` loads one instead.
        exp["teacher"] = {"model": t, "train": recipe(0.05)}
    exp.update({"student": s, "methods": methods, "train": recipe(lr)})
    return exp, source


def render(t: dict, s: dict, method: str) -> str:
    exp, source = experiment(t, s, method)
    head = (
        f"# CIFAR-100, {t['name']} -> {s['name']}: {method}. {source}.\n"
        "# Generated by configs/cifar100/generate.py (edit the script, not this file).\n"
        f"#   kdlab run configs/cifar100/{pair_dir(t, s)}/{method}.yaml data.params.path=/path/to/cifar-100-python\n"
    )
    return head + yaml.safe_dump(exp, sort_keys=False, default_flow_style=None, width=110)


def all_configs() -> dict[Path, str]:
    out = {}
    for t, s in PAIRS:
        pair = pair_dir(t, s)
        for method in ["teacher", *methods_for(pair)]:
            if method == "fsp" and pair in FSP_SKIPPED:
                continue
            out[HERE / pair / f"{method}.yaml"] = render(t, s, method)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = ap.parse_args(argv)
    stale = []
    for path, text in all_configs().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
            continue
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    if stale:
        print("out of date (run configs/cifar100/generate.py):", *map(str, stale), sep="\n  ")
        return 1
    print(f"{len(all_configs())} configs {'up to date' if args.check else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
