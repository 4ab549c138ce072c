"""The tuned study's learning-rate rule (src/reporting/lr_selection.py), worked by hand."""

from __future__ import annotations

import pytest

from src.reporting import lr_selection as L


def record(task, method, lr, value, study=L.LR_STUDY, seed=41, budget="r8", **method_cfg):
    return {
        "run_id": f"{task}-{method}-{lr}-{study}",
        "status": "ok",
        "task": task,
        "method": method,
        "seed": seed,
        "primary_metric": "accuracy",
        "best": {"accuracy": value / 100},
        "finished_at": "2026-12-01T00:00:00",
        "config": {
            "study": study,
            "budget": {"name": budget},
            "trainer": {"learning_rate": lr},
            "method": method_cfg,
        },
    }


def selection(scores: dict[float, float]) -> L.Selection:
    return L.select(L.Selection("rte", "lora", scores=dict(scores)))


def test_an_open_grid_selects_nothing_and_names_its_missing_points():
    sel = selection({1e-3: 50.0, 1e-2: 60.0})
    assert sel.selected is None and sel.missing == [3e-3]


def test_an_interior_best_is_selected_and_a_tie_goes_to_the_smaller_lr():
    assert selection({1e-3: 50.0, 3e-3: 61.0, 1e-2: 60.0}).selected == 3e-3
    assert selection({1e-3: 50.0, 3e-3: 61.0, 1e-2: 61.0}).selected == 3e-3


@pytest.mark.parametrize("edge,beyond", [(1e-3, 3e-4), (1e-2, 3e-2)])
def test_a_best_at_an_edge_asks_for_the_point_beyond_and_then_selects_over_all_four(edge, beyond):
    scores = {1e-3: 50.0, 3e-3: 55.0, 1e-2: 50.0, edge: 70.0}
    sel = selection(scores)
    assert sel.selected is None and sel.missing == [beyond]
    assert selection({**scores, beyond: 71.0}).selected == beyond
    assert selection({**scores, beyond: 69.0}).selected == edge
    # a tie across the extension still goes to the smaller LR
    assert selection({**scores, beyond: 70.0}).selected == min(edge, beyond)


def test_grid_points_reuse_only_unchanged_methods_default_runs_at_seed_41_r8():
    records = [
        record("rte", "lora", 1e-3, 57.0, study="cpu-repro"),  # reused
        record("rte", "increlora", 1e-3, 52.0, study="cpu-repro"),  # old IncreLoRA defaults: not reused
        record("rte", "lora", 3e-3, 52.0),
        record("rte", "lora", 1e-2, 52.0, study="cpu-repro-lr1e-2"),  # reused
        record("rte", "lora", 3e-3, 99.0, seed=42),  # not the selection seed
        record("rte", "lora", 3e-3, 99.0, budget="r2"),
        record("rte", "triadapt", 1e-3, 99.0, study="cpu-repro", schedule="exponential"),  # an ablation
        record("rte", "triadapt", 1e-3, 99.0, score="random"),  # the control
        record("rte", "increlora", 3e-3, 99.0, score="random"),  # IncreLoRA's control
    ]
    points = L.grid_points(records)
    assert set(points) == {("rte", "lora")}
    lora = points[("rte", "lora")]
    assert lora.scores == pytest.approx({1e-3: 57.0, 3e-3: 52.0, 1e-2: 52.0})
    assert lora.sources[1e-3] == "cpu-repro" and lora.sources[3e-3] == L.LR_STUDY
    assert lora.missing == [3e-4]  # best at the lower edge
    assert L.edge_sweeps(records) == {
        "rte": ["method=lora budget=r8 trainer.learning_rate=0.0003 study=cpu-repro-lr"]
    }
    table = "\n".join(L.selection_table(points, ["rte"], ["lora", "increlora"]))
    assert "57.00†" in table and "| rte | increlora |  | to run | to run | to run |  | open |" in table


def test_tuned_sweeps_run_selected_cells_reuse_fixed_lr_records_and_add_the_controls():
    records = [
        record("rte", "lora", 1e-3, 57.0, study="cpu-repro"),
        record("rte", "lora", 3e-3, 52.0),
        record("rte", "lora", 1e-2, 52.0),
        record("rte", "lora", 3e-4, 50.0),  # lora: 1e-3, the fixed-lr study's LR
        record("rte", "triadapt", 1e-3, 50.0, study="cpu-repro"),
        record("rte", "triadapt", 3e-3, 55.0),
        record("rte", "triadapt", 1e-2, 52.0),  # triadapt: 3e-3
        record("rte", "increlora", 1e-3, 50.0),  # open: two points to run
        record("sst2", "increlora", 1e-3, 50.0),
        record("sst2", "increlora", 3e-3, 55.0),
        record("sst2", "increlora", 1e-2, 52.0),
    ]
    assert L.selected_lrs(records) == {
        ("rte", "lora"): 1e-3,
        ("rte", "triadapt"): 3e-3,
        ("sst2", "increlora"): 3e-3,
    }
    at = "study=cpu-repro-tuned"
    assert L.tuned_sweeps(records) == {
        "rte": [  # lora reuses the fixed-lr study, which ran every tuned seed on RTE
            f"method=triadapt budget=r2,r8 trainer.learning_rate=0.003 {at}",
            f"method=triadapt budget=r8 method.score=random trainer.learning_rate=0.003 {at}",
        ],
        "sst2": [
            f"method=increlora budget=r2,r8 trainer.learning_rate=0.003 {at}",
            f"method=increlora budget=r8 method.score=random trainer.learning_rate=0.003 {at}",
        ],
    }
    selected = L.selected_lrs(records)
    tuned = lambda method, lr, study, seed=42, **cfg: L.is_tuned_run(  # noqa: E731
        record("rte", method, lr, 60.0, study=study, seed=seed, **cfg), selected
    )
    assert tuned("lora", 1e-3, "cpu-repro")  # reused
    assert not tuned("lora", 1e-3, "cpu-repro", seed=41)  # the selection seed is never in a mean
    assert tuned("triadapt", 3e-3, L.TUNED_STUDY) and tuned("triadapt", 3e-3, L.TUNED_STUDY, score="random")
    assert not tuned("triadapt", 1e-3, "cpu-repro")  # not its selected LR
    assert not tuned("triadapt", 3e-3, L.TUNED_STUDY, schedule="exponential")  # an ablation
    assert not tuned("increlora", 1e-3, L.TUNED_STUDY)  # its cell is still open


def test_tuned_sweeps_run_only_the_seeds_a_reused_cell_lacks_and_the_schedules_of_claim_4():
    grid = lambda task, method, best: [  # noqa: E731
        record(
            task, method, lr, 60.0 if lr == best else 50.0, study="cpu-repro" if lr == 1e-3 else L.LR_STUDY
        )
        for lr in (*L.GRID, 3e-4 if best == 1e-3 else 3e-2)
    ]
    records = grid("stsb", "lora", 1e-3) + grid("mrpc", "triadapt", 1e-3) + grid("cola", "triadapt", 3e-3)
    sweeps = L.tuned_sweeps(records)
    at = lambda lr: f"trainer.learning_rate={lr} study=cpu-repro-tuned"  # noqa: E731
    # STS-B's fixed-lr study ran seeds 41-43: the reused LoRA cell runs 44 and 45 in the tuned study
    assert sweeps["stsb"] == [f"method=lora budget=r2,r8 {at(0.001)} seed=44,45"]
    # MRPC: every tuned seed of the cell and of its schedule ablation is in the fixed-lr study
    assert sweeps["mrpc"] == [f"method=triadapt budget=r8 method.score=random {at(0.001)}"]
    assert sweeps["cola"] == [
        f"method=triadapt budget=r2,r8 {at(0.003)}",
        f"method=triadapt budget=r8 method.score=random {at(0.003)}",
        f"method=triadapt budget=r8 method.schedule=exponential {at(0.003)}",
        f"method=triadapt budget=r8 method.schedule=fixed method.top_h=15 {at(0.003)}",
    ]


def test_schedule_runs_of_claim_4_are_the_emitted_ones_and_the_reused_fixed_lr_ablation():
    grid = lambda task, best: [  # noqa: E731
        record(
            task,
            "triadapt",
            lr,
            60.0 if lr == best else 50.0,
            study="cpu-repro" if lr == 1e-3 else L.LR_STUDY,
        )
        for lr in (*L.GRID, 3e-4 if best == 1e-3 else 3e-2)
    ]
    selected = L.selected_lrs(grid("mrpc", 1e-3) + grid("cola", 3e-3) + grid("rte", 3e-3))
    run = lambda task, lr, study, seed=42, budget="r8", **cfg: L.is_schedule_run(  # noqa: E731
        record(task, "triadapt", lr, 60.0, study=study, seed=seed, budget=budget, **cfg), selected
    )
    assert run("cola", 3e-3, L.TUNED_STUDY, schedule="exponential")
    assert run("cola", 3e-3, L.TUNED_STUDY, schedule="fixed", top_h=15)
    assert run("mrpc", 1e-3, "cpu-repro", schedule="exponential")  # reused: MRPC's LR is 1e-3
    assert not run("cola", 3e-3, L.TUNED_STUDY)  # linear is the main grid
    assert not run("cola", 3e-3, L.TUNED_STUDY, seed=41, schedule="exponential")  # the selection seed
    assert not run("cola", 1e-3, L.TUNED_STUDY, schedule="exponential")  # not its selected LR
    assert not run("cola", 3e-3, L.TUNED_STUDY, budget="r2", schedule="exponential")
    assert not run("cola", 3e-3, L.TUNED_STUDY, schedule="exponential", init="gaussian")  # two options
    assert not run("rte", 3e-3, L.TUNED_STUDY, schedule="exponential")  # RTE is not in claim 4's plan


def test_the_queue_runs_a_sweeps_own_seeds_and_only_the_seeds_asked_for():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "cpu_repro.py"
    spec = importlib.util.spec_from_file_location("cpu_repro_script", path)
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up while the class is built
    spec.loader.exec_module(script)
    chunk = script.Chunk(
        "tuned-stsb", "stsb", "42,43,44,45", ["method=adalora budget=r2,r8", "method=lora seed=44,45"]
    )
    seeds = lambda cmds: [[a for a in c if a.startswith("seed=")] for c in cmds]  # noqa: E731
    assert seeds(script.commands(chunk, "data", "runs", [])) == [["seed=42,43,44,45"], ["seed=44,45"]]
    assert seeds(script.commands(chunk, "data", "runs", [], {"44"})) == [["seed=44"], ["seed=44"]]
    assert seeds(script.commands(chunk, "data", "runs", [], {"42"})) == [["seed=42"]]  # lora has no 42 to run
