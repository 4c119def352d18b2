"""assessments/kubernetes/: the manifests validate against the Kubernetes schema (kubernetes-validate,
no cluster), lock the grader's pods down, and their shard arithmetic covers the class exactly once;
the Zero-to-JupyterHub values offer a CPU and a GPU profile with idle culling; the Dockerfile grades
as a non-root user over a read-only course."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from dlcourse.config import MODES
from dlcourse.grading import grader

FOLDER = Path(__file__).resolve().parent.parent / "assessments" / "kubernetes"
MANIFESTS = ("storage.yaml", "network-policy.yaml", "grade-job.yaml", "merge-job.yaml")
KUBERNETES_VERSION = "1.33"


def _load(name: str) -> dict:
    return yaml.safe_load((FOLDER / name).read_text())


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_against_the_kubernetes_schema(name):
    kubernetes_validate.validate(_load(name), KUBERNETES_VERSION, strict=True)


def test_grade_job_pods_are_locked_down():
    job = _load("grade-job.yaml")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["spec"]["completionMode"] == "Indexed" and pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory", "ephemeral-storage"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data/class"].get("readOnly") is True and mounts["/settings"].get("readOnly") is True
    labels = job["spec"]["template"]["metadata"]["labels"]
    policy = _load("network-policy.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"} and "egress" not in policy["spec"]


def _shell(command: str, index: int) -> str:
    """What the pod's ``sh -c`` runs for ``JOB_COMPLETION_INDEX=index`` (``exec`` replaced by ``echo``)."""
    return subprocess.run(["sh", "-c", command.replace("exec ", "echo ", 1)], env={"JOB_COMPLETION_INDEX": str(index),
                          "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True).stdout.split()


def test_job_indices_become_every_shard_once_and_the_merge_reads_them_all():
    job = _load("grade-job.yaml")
    n = job["spec"]["completions"]
    assert job["spec"]["parallelism"] <= n
    (container,) = job["spec"]["template"]["spec"]["containers"]
    outs, shards = [], []
    for index in range(n):
        words = _shell(container["args"][0], index)
        shards.append(grader.parse_shard(words[words.index("--shard") + 1]))
        outs.append(words[words.index("--out") + 1])
    assert shards == [(k, n) for k in range(1, n + 1)]
    (merge,) = _load("merge-job.yaml")["spec"]["template"]["spec"]["containers"]
    words = _shell(merge["args"][0], 0)
    assert words[:3] == ["dlcourse", "gradebook", "merge"] and words[4:] == outs


def test_jupyterhub_values_offer_a_cpu_and_a_gpu_profile_with_culling():
    values = _load("jupyterhub-config.yaml")
    profiles = values["singleuser"]["profileList"]
    budgets = [p["kubespawner_override"]["environment"]["DLCOURSE_BUDGET"] for p in profiles]
    assert budgets == ["cpu", "full"] and set(budgets) <= set(MODES)
    assert profiles[1]["kubespawner_override"]["extra_resource_limits"] == {"nvidia.com/gpu": "1"}
    assert "extra_resource_limits" not in profiles[0]["kubespawner_override"]
    assert values["cull"]["enabled"] is True and values["cull"]["timeout"] > 0


def test_dockerfile_grades_as_non_root_over_a_read_only_course():
    text = (FOLDER.parent / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "bubblewrap" in text and "chmod -R a-w /course" in text
