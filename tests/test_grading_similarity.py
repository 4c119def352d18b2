"""``dlcourse gradebook similarity``: a fine-tuned copy of a classmate's weights, renamed and reformatted
code, and a reworded-only answer are flagged; independent work is not; no score changes."""
from __future__ import annotations

import copy
import csv
import json
import re

import pytest
import torch

from dlcourse.grading import grader, report, similarity
from dlcourse.grading.exercises import TAG_PREFIX
from dlcourse.models import ConditionalUNet
from test_grading import _master, _submission, _with_cell

ANSWER = "Guidance trades diversity for fidelity: larger w sharpens each class but the samples look alike."


def _model(seed: int) -> ConditionalUNet:
    torch.manual_seed(seed)
    return ConditionalUNet(channels=[8, 16], image_size=16, T=20, context_dim=11).eval()


def _fine_tuned(model: ConditionalUNet) -> ConditionalUNet:
    """``model`` moved by noise of 30 % of each tensor's spread (what a short fine-tune does)."""
    torch.manual_seed(99)
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.3 * p.std().nan_to_num(0.1) * torch.randn_like(p))
    return tuned


def _renamed(nb: dict) -> dict:
    """The same code with other names, spacing and comments."""
    for cell in nb["cells"]:
        if any(t.startswith(TAG_PREFIX) for t in cell.get("metadata", {}).get("tags", [])):
            source = "".join(cell["source"])
            source = re.sub(r"\bab\b", "alpha_bar_t", source)
            source = re.sub(r"\bn\b", "count", source).replace(" * ", "*") + "\n\n# my own work\n"
            cell["source"] = source
    return nb


@pytest.fixture
def flagged(tmp_path):
    class_dir, master = tmp_path / "class", _master()
    alice = _model(0)
    wrong = _with_cell(master, "q_sample", "# exercise: q_sample\ndef q_sample(x0, t, noise, alpha_bars):\n    return x0\n")
    for name, nb, model, answer in (("alice", master, alice, ANSWER), ("bob", _renamed(copy.deepcopy(master)),
                                    _fine_tuned(alice), "  " + ANSWER.upper().replace(":", " -")),
                                    ("carol", wrong, _model(1), "Larger w: sharper and less varied samples overall."),
                                    ("<dan>", None, None, ANSWER[:30])):
        folder = _submission(class_dir / name, nb, model)
        (folder / "answers.json").write_text(json.dumps({"w": 1.0, "answers": {"q1": answer}}))
    gradebook = tmp_path / "out" / "gradebook.csv"
    rows = {key: {"id": key, "status": "failed", "total": total, "reason": ""}
            for key, total in (("alice", 60.0), ("bob", 61.0), ("carol", 20.0), ("<dan>", 0.0))}
    report.write_gradebook(gradebook, rows)
    assert grader.gradebook_main(["similarity", str(gradebook), "--class", str(class_dir)]) == 0
    with open(gradebook, newline="", encoding="utf-8") as f:
        return {"rows": {r["id"]: r for r in csv.DictReader(f)}, "class_dir": class_dir, "gradebook": gradebook}


def test_copies_are_flagged_on_all_three_signals(flagged):
    rows = flagged["rows"]
    assert rows["alice"]["similar_to"].startswith("bob (weights 0.9") and "code" in rows["alice"]["similar_to"]
    assert "answers q1" in rows["bob"]["similar_to"] and rows["bob"]["similar_to"].startswith("alice (")
    assert rows["carol"]["similar_to"] == "" and rows["<dan>"]["similar_to"] == ""


def test_flags_change_no_score_and_the_class_page_is_escaped(flagged):
    totals = {k: r["total"] for k, r in flagged["rows"].items()}
    assert totals == {"alice": "60.0", "bob": "61.0", "carol": "20.0", "<dan>": "0.0"}
    page = (flagged["gradebook"].parent / "similarity.html").read_text()
    assert "1 pair(s) among 4 submissions" in page and "<dan>" not in page


def test_independent_models_are_far_apart(flagged):
    (_, alice), (_, carol) = (similarity.weight_sketch(flagged["class_dir"] / n) for n in ("alice", "carol"))
    assert abs(float(alice @ carol)) < 0.3


@pytest.mark.parametrize("threshold", [0, 1.5, float("nan")])
def test_bad_threshold_is_refused(flagged, threshold):
    with pytest.raises(ValueError, match="--weight-threshold"):
        similarity.flag_gradebook(flagged["gradebook"], flagged["class_dir"], threshold)
