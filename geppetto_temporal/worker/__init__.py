"""Worker: run geppetto's workflows and activities (`create_worker`, `geppetto worker`)."""

from geppetto_temporal.plugin import WORKFLOWS, GeppettoPlugin, workflow_runner
from geppetto_temporal.worker._worker import create_worker

__all__ = ["WORKFLOWS", "GeppettoPlugin", "create_worker", "workflow_runner"]
