"""Gang scheduling of multi-node jobs: a Kueue queue label on the job object (TrainJob and PyTorchJob),
a pod group of all nodes for PyTorchJob, and a clear refusal of --gang for a TrainJob (whose pod group
policy lives on the TrainingRuntime)."""

from __future__ import annotations

import pytest
from test_k8s_jobs import _spec

from bridgerl.launch import k8s as k8s_jobs
from bridgerl.launch.k8s import KUEUE_QUEUE_LABEL, build_pytorchjob, build_trainjob


@pytest.mark.parametrize("build", [build_trainjob, build_pytorchjob])
def test_kueue_queue_label_on_the_job_object(build):
    body = build(_spec(queue="team-a-gpus"))
    assert body["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a-gpus"
    assert KUEUE_QUEUE_LABEL not in build(_spec())["metadata"]["labels"], "no queue unless asked"


def test_kueue_label_round_trips_and_pods_stay_unlabelled():
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    body = build_trainjob(_spec(queue="q"))
    assert TrainerV1alpha1TrainJob.from_dict(body).to_dict() == body
    pj = build_pytorchjob(_spec(queue="q"))
    for rs in pj["spec"]["pytorchReplicaSpecs"].values():
        assert KUEUE_QUEUE_LABEL not in rs["template"]["metadata"]["labels"]


def test_pytorchjob_gang_is_a_pod_group_of_all_nodes():
    body = build_pytorchjob(_spec(nodes=4, gang=True))
    assert body["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 4}
    assert "schedulingPolicy" not in build_pytorchjob(_spec(nodes=4))["spec"]["runPolicy"]


def test_cli_queue_and_gang(capsys):
    base = ["--name", "r1", "--image", "img:1", "--nodes", "2", "--namespace", "ns", "--dry-run", "--", "train"]
    assert k8s_jobs.main(["--api", "pytorchjob", "--queue", "q1", "--gang", *base]) == 0
    out = capsys.readouterr().out
    assert '"kueue.x-k8s.io/queue-name": "q1"' in out and '"minAvailable": 2' in out
    with pytest.raises(SystemExit, match="podGroupPolicy"):
        k8s_jobs.main(["--api", "trainer", "--gang", *base])
