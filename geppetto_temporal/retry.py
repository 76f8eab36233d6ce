"""A serialisable retry policy that maps onto Temporal's `RetryPolicy`."""

from __future__ import annotations

from datetime import timedelta

from pydantic import ConfigDict
from temporalio.common import RetryPolicy

from geppetto_temporal._wire import WireModel


class RetrySpec(WireModel):
    """How often and how fast Temporal retries an activity (LLM step or tool call)."""

    model_config = ConfigDict(frozen=True)

    maximum_attempts: int = 3
    initial_interval_seconds: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval_seconds: float = 30.0
    non_retryable_error_types: tuple[str, ...] = ()

    def to_retry_policy(self) -> RetryPolicy:
        """The equivalent `temporalio.common.RetryPolicy`."""
        return RetryPolicy(
            initial_interval=timedelta(seconds=self.initial_interval_seconds),
            backoff_coefficient=self.backoff_coefficient,
            maximum_interval=timedelta(seconds=self.maximum_interval_seconds),
            maximum_attempts=self.maximum_attempts,
            non_retryable_error_types=list(self.non_retryable_error_types) or None,
        )

    @classmethod
    def from_retry_policy(cls, policy: RetryPolicy) -> RetrySpec:
        """Convert a `temporalio.common.RetryPolicy`."""
        return cls(
            maximum_attempts=policy.maximum_attempts,
            initial_interval_seconds=policy.initial_interval.total_seconds(),
            backoff_coefficient=policy.backoff_coefficient,
            maximum_interval_seconds=(
                policy.maximum_interval.total_seconds()
                if policy.maximum_interval
                else 100 * policy.initial_interval.total_seconds()
            ),
            non_retryable_error_types=tuple(policy.non_retryable_error_types or ()),
        )
