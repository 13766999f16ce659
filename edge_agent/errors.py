"""The agent's exception family.

Domain code raises these anywhere; only the gRPC servicer turns them into
status codes (``edge_agent.server.STATUS_FOR_ERROR``). Every message says what
was wrong, the offending value, and what to do about it.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base class of every error the agent reports to a client."""


class InvalidArgumentError(EdgeAgentError):
    """A request field holds a value the agent cannot accept."""


class ModelNotFoundError(EdgeAgentError):
    """No model component by that name is deployed."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        hint = ""
        if known is not None:
            listed = ", ".join(sorted(known)[:20]) or "none"
            hint = f" Deployed components: {listed}."
        super().__init__(
            f"No model component named {name!r} is deployed.{hint} "
            "Call ListModels to see the deployed components, or add a component directory "
            "with a manifest.json to a models directory."
        )
        self.name = name


class WrongStateError(EdgeAgentError):
    """The model is not in a state that allows the call (FAILED_PRECONDITION)."""


class ResourceExhaustedError(EdgeAgentError):
    """Not enough memory to load the model, or the agent cannot keep up."""


class ModelLoadError(EdgeAgentError):
    """A model component could not be loaded; the message names the file."""


class ManifestError(ModelLoadError):
    """A component's manifest is missing, malformed or inconsistent."""


class BackendUnavailableError(EdgeAgentError):
    """An inference backend (or its optional dependency) is not usable here."""


class InferenceError(EdgeAgentError):
    """The model ran but its output cannot be trusted or interpreted (INTERNAL)."""
