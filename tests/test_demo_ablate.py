"""`llm4seg demo` (reduced schedule), `llm4seg ablate` (two rows), and a real-data run on BUS-BRA."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from helpers import SHARED_DATA, run_cli
from nnunet_fixtures import NnUNetProject

from nnunetv2_llm4seg.experiments import NnUNetFolders
from nnunetv2_llm4seg.plans_variants import cap_configuration
from nnunetv2_llm4seg.synthetic import make_ultrasound_dataset

pytestmark = pytest.mark.slow


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_demo_with_a_reduced_schedule_never_touches_existing_datasets(tmp_path):
    user = NnUNetProject(tmp_path / "user")
    make_ultrasound_dataset(user.raw, 999, cases=3, size=32, name="Precious")
    (user.results / "Dataset999_Precious" / "some_model").mkdir(parents=True)
    (user.results / "Dataset999_Precious" / "some_model" / "checkpoint_final.pth").write_bytes(b"weights")
    (user.preprocessed / "Dataset998_Other").mkdir(parents=True)
    before = digests(user.root)
    output = tmp_path / "demo"
    result = run_cli("llm4seg", "demo", "--output", str(output), "--epochs", "2", "--iterations", "8",
                     "--train-cases", "12", "--test-cases", "4", "--image-size", "64", "--no-progress",
                     env=user.env(), timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nnUNetTrainerLLM4SegMiniLM" in result.stdout and "| Dice (nnU-Net) |" in result.stdout
    assert "F1 (paper protocol)" in result.stdout and "empty/empty excluded" in result.stdout
    after = digests(user.root)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed was changed
    assert not any(name.startswith(("raw/Dataset999", "raw/Dataset998")) for name in set(after) - set(before))
    assert (user.raw / "Dataset997_LLM4SegDemo").is_dir()  # the first free id, in the user's folders
    summary = json.loads((output / "results.json").read_text())
    assert set(summary["methods"]) == {"nnUNetTrainer", "nnUNetTrainerLLM4SegMiniLM"}
    for method in summary["methods"].values():
        assert method["cases"] == 4 and method["dice_mean"] > 0.3
        assert abs(method["paper_iou_mean"] - method["iou_mean"]) < 1e-4  # every synthetic case has a lesion
        assert 0 < method["paper_f1_mean"] <= 1
    assert summary["methods"]["nnUNetTrainerLLM4SegMiniLM"]["frozen_params"] == 1_971_072
    assert summary["methods"]["nnUNetTrainer"]["frozen_params"] == 0
    for figure in ("training_curves.png", "overlays.png"):
        assert_png(output / figure)
    assert "| nnUNetTrainer |" in (output / "results.md").read_text() and (output / ".llm4seg_demo").is_file()


def test_demo_uses_its_own_folders_when_nnunet_variables_are_not_set(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(name, raising=False)
    folders = NnUNetFolders.choose(tmp_path / "out")
    assert folders.raw == tmp_path / "out" / "nnUNet_raw" and folders.free_dataset_id() == 999


def test_demo_refuses_an_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_cli("llm4seg", "demo", "--output", str(blocker / "demo"), "--no-progress")
    assert result.returncode == 2
    assert "cannot write to the output folder" in result.stderr and "--output" in result.stderr
    assert blocker.read_text() == "not a folder"


def test_cpu_caps_cut_stages_that_no_longer_fit():
    configuration = {"patch_size": [512, 384], "batch_size": 12, "architecture": {"arch_kwargs": {
        "n_stages": 7, "features_per_stage": [32, 64, 128, 256, 512, 512, 512],
        "kernel_sizes": [[3, 3]] * 7, "strides": [[1, 1]] + [[2, 2]] * 6, "n_conv_per_stage": [2] * 7,
        "n_conv_per_stage_decoder": [2] * 6}}}
    capped = cap_configuration(configuration, max_patch=128, max_features=256, max_batch=4)
    arch = capped["architecture"]["arch_kwargs"]
    assert capped["patch_size"] == [128, 128] and capped["batch_size"] == 4
    assert arch["n_stages"] == 6 and len(arch["strides"]) == 6 and len(arch["n_conv_per_stage_decoder"]) == 5
    assert max(arch["features_per_stage"]) == 256
    assert configuration["patch_size"] == [512, 384]  # the original is left alone


def test_ablate_two_rows_writes_table_and_plot_and_skips_finished_folds(tmp_path):
    project = NnUNetProject(tmp_path)
    make_ultrasound_dataset(project.raw, 631, cases=8, size=32, seed=6)
    args = ("llm4seg", "ablate", "631", "--rows", "stock,frozen", "--preset", "minilm-l6", "--epochs", "1",
            "--iterations", "2", "--device", "cpu", "--no-progress")
    first = project.run(*args, timeout=1200)
    output = project.results / "Dataset631_SyntheticUltrasound" / \
        "llm4seg_ablation__nnUNetPlans_llm4seg-minilm-l6_1x2_cap128-256-4__2d"  # CPU caps by default
    table = (output / "ablation.md").read_text()
    assert "| all | stock | 2 | 1 |" in table and "| all | frozen | 2 | 1 |" in table  # 2 cases, 1 run
    assert "Wilcoxon" in table and "1,971,072" in table  # MiniLM's frozen layer + positions
    assert "paper protocol" in table and "| baseline |" in table
    rows = (output / "ablation.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,subset,row,trainer,cases,runs,dice_run_mean") and len(rows) == 3
    assert len((output / "ablation_per_case.csv").read_text().splitlines()) == 1 + 2 * 2  # 2 val cases per row
    for figure in ("ablation_dice.png", "ablation_differences.png"):
        assert (output / figure).stat().st_size > 1000
    checkpoint = project.results / "Dataset631_SyntheticUltrasound" / \
        "nnUNetTrainerLLM4Seg__nnUNetPlans_llm4seg-minilm-l6_1x2_cap128-256-4__2d" / "fold_0" / "checkpoint_final.pth"
    stamp = checkpoint.stat().st_mtime_ns
    again = project.run(*args, timeout=600)
    assert checkpoint.stat().st_mtime_ns == stamp and again.stdout.count("| frozen |") == 1
    assert first.stdout.split("wrote")[0] == again.stdout.split("wrote")[0]


@pytest.mark.realdata
def test_busbra_real_data_brief_training_beats_an_untrained_network(tmp_path):
    source = SHARED_DATA / "busbra"
    if not (source / "bus_data.csv").is_file():
        pytest.skip(f"REAL DATA MISSING: {source} is absent, so the BUS-BRA real-data test cannot run")
    project = NnUNetProject(tmp_path)
    output = tmp_path / "busbra_demo"
    result = project.run("llm4seg", "demo", "--data", f"busbra:{source}", "--trainers",
                         "nnUNetTrainerLLM4SegMiniLM", "--output", str(output), "--epochs", "6",
                         "--iterations", "30", "--image-size", "64", "--no-progress", "--device", "cpu",
                         timeout=1800)
    summary = json.loads((output / "results.json").read_text())["methods"]["nnUNetTrainerLLM4SegMiniLM"]
    dataset = project.raw / "Dataset999_LLM4SegDemo_busbra"
    with open(source / "bus_data.csv", newline="") as handle:
        patient = {row["ID"]: row["Case"] for row in csv.DictReader(handle)}
    held_out = {patient[p.name[:-4]] for p in (dataset / "labelsTs").glob("*.png")}
    trained = {patient[p.name[:-4]] for p in (dataset / "labelsTr").glob("*.png")}
    assert held_out and not held_out & trained  # whole patients are held out
    assert summary["cases"] >= 100, result.stdout  # the held-out patients of fold 0
    # An untrained network (or one predicting all foreground) scores far below this on BUS-BRA.
    assert summary["dice_mean"] > 0.55, summary


def test_train_fold_validates_a_finished_fold_and_refuses_a_folder_of_another_spec(tmp_path, monkeypatch):
    from nnunetv2_llm4seg.errors import SpecConflictError
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_llm4seg.experiments import Schedule, train_fold, write_plans_variant

    project = NnUNetProject(tmp_path)
    make_ultrasound_dataset(project.raw, 641, cases=6, size=32, seed=7)
    project.plan(641, "2d")
    for key, value in project.env().items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    dataset = "Dataset641_SyntheticUltrasound"
    plans = write_plans_variant(project.preprocessed / dataset, "nnUNetPlans", "nnUNetPlans_t", "2d",
                                llm4seg_entry="minilm-l6")
    schedule = Schedule(epochs=2, iterations=1, val_iterations=1, checkpoint_every=1)
    args = (dataset, "2d", 0, "nnUNetTrainerLLM4Seg", plans, schedule, "cpu", tmp_path / "log.txt")
    saved = []
    save_checkpoint = nnUNetTrainer.save_checkpoint
    monkeypatch.setattr(nnUNetTrainer, "save_checkpoint",
                        lambda trainer, name: (saved.append(Path(name).name), save_checkpoint(trainer, name)))
    first = train_fold(*args, validate=False, progress=False)
    assert saved[0] == "checkpoint_latest.pth" and saved[-1] == "checkpoint_final.pth"  # resumable mid-run
    checkpoint = first.fold_folder / "checkpoint_final.pth"
    stamp = checkpoint.stat().st_mtime_ns
    second = train_fold(*args, validate=True, progress=False)  # finished: only the validation is run
    assert (second.fold_folder / "validation" / "summary.json").is_file()
    assert checkpoint.stat().st_mtime_ns == stamp
    third = train_fold(*args, validate=True, progress=False)
    assert third.skipped and third.frozen_params == 1_971_072
    stored = json.loads((first.model_folder / "plans.json").read_text())
    stored["configurations"]["2d"]["llm4seg"]["attention"] = "causal"  # e.g. a preset that changed meanwhile
    (first.model_folder / "plans.json").write_text(json.dumps(stored))
    with pytest.raises(SpecConflictError, match="attention"):
        train_fold(*args, validate=True, progress=False)


def test_demo_finds_a_users_dataset_by_id_or_name(tmp_path):
    from nnunetv2_llm4seg.demo import _copy_nnunet_dataset

    make_ultrasound_dataset(tmp_path / "user_raw", 5, cases=2, size=16, name="Mine")
    folders = NnUNetFolders(tmp_path / "demo_raw", tmp_path / "pre", tmp_path / "res")
    for reference, new_id in (("5", 990), ("Dataset005", 991), ("Dataset005_Mine", 992)):
        copy = _copy_nnunet_dataset(reference, tmp_path / "user_raw", folders, new_id)
        assert copy.name == f"Dataset{new_id}_LLM4SegDemo_Mine" and (copy / "dataset.json").is_file()
    assert len(list((tmp_path / "user_raw" / "Dataset005_Mine" / "imagesTr").iterdir())) == 2


def test_a_copied_datasets_pngs_are_shrunk_like_the_converters(tmp_path):
    """Images bilinear, labels and palette images nearest (values and palette kept), small files untouched."""
    import numpy as np
    from PIL import Image

    from nnunetv2_llm4seg.demo import _resize_pngs

    for name in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_path / name).mkdir()
    stripes = np.tile(np.array([0, 1], np.uint8), (80, 60))  # 80 x 120, one-pixel columns 0 1 0 1 ...
    Image.fromarray(np.stack([stripes * 255] * 3, axis=-1)).save(tmp_path / "imagesTr" / "a_0000.png")
    Image.fromarray(stripes * 2).save(tmp_path / "labelsTr" / "a.png")
    palette = Image.fromarray(stripes * 2, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "imagesTs" / "b_0000.png")
    Image.fromarray(stripes[:40, :40] * 255).save(tmp_path / "imagesTs" / "small_0000.png")
    small_before = (tmp_path / "imagesTs" / "small_0000.png").read_bytes()

    _resize_pngs(tmp_path, 60)

    with Image.open(tmp_path / "imagesTr" / "a_0000.png") as image:
        assert image.size == (60, 40) and image.mode == "RGB"
        assert set(np.unique(np.asarray(image)).tolist()) - {0, 255}  # bilinear mixes the stripes
    with Image.open(tmp_path / "labelsTr" / "a.png") as image:
        assert image.size == (60, 40) and set(np.unique(np.asarray(image)).tolist()) <= {0, 2}  # nearest
    with Image.open(tmp_path / "imagesTs" / "b_0000.png") as image:
        assert image.mode == "P" and image.getpalette()[3:6] == [255, 0, 0]
        assert image.size == (60, 40) and set(np.unique(np.asarray(image)).tolist()) <= {0, 2}
    assert (tmp_path / "imagesTs" / "small_0000.png").read_bytes() == small_before
