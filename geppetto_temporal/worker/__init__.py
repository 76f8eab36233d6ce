"""Worker: run geppetto's workflows and activities (`create_worker`, `geppetto worker`)."""

from geppetto_temporal.worker._worker import WORKFLOWS, create_worker, workflow_runner

__all__ = ["WORKFLOWS", "create_worker", "workflow_runner"]
