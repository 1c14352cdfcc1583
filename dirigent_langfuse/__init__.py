"""dirigent_langfuse: mirror Dirigent BusEvents into Langfuse, without ever slowing the host.

The public API is what `__all__` lists; every other module-level name is private.
"""

from ._version import __version__
from .bus import (  # noqa: E402
    BusEvent,
    ConnectorStatus,
    MessageCompleted,
    MessageStarted,
    ScrollBound,
    SessionCreated,
    SessionEnded,
    SessionUpdate,
    UnknownEvent,
    Usage,
    event_from_json,
    event_to_json,
)
from .config import LangfuseConfig  # noqa: E402
from .contracts import (  # noqa: E402
    Health,
    HealthTracker,
    OutcomeStatus,
    SessionStream,
    StreamError,
    StreamOutcome,
    StreamStats,
)
from .delivery.client import IngestionResult, LangfuseClient  # noqa: E402
from .errors import (  # noqa: E402
    BusEventError,
    ConfigError,
    DirigentLangfuseError,
    LangfuseError,
    LangfuseStatusError,
    LangfuseTransportError,
    RegistryError,
)
from .factory import LangfuseFactory  # noqa: E402
from .mapping.items import MappingState, bus_event_to_items  # noqa: E402
from .registry import StreamFactory, StreamFactoryRegistry, StreamSet  # noqa: E402
from .specs import StreamScope, StreamSpec, load_stream_specs  # noqa: E402
from .stream import LangfuseStream  # noqa: E402

__all__ = [
    "__version__",
    # events
    "BusEvent",
    "SessionCreated",
    "MessageStarted",
    "MessageCompleted",
    "Usage",
    "SessionUpdate",
    "SessionEnded",
    "ScrollBound",
    "ConnectorStatus",
    "UnknownEvent",
    "event_from_json",
    "event_to_json",
    # stream contracts
    "SessionStream",
    "StreamOutcome",
    "OutcomeStatus",
    "StreamError",
    "StreamStats",
    "Health",
    "HealthTracker",
    "StreamScope",
    "StreamSpec",
    "load_stream_specs",
    "StreamFactory",
    "StreamFactoryRegistry",
    "StreamSet",
    # langfuse
    "LangfuseStream",
    "LangfuseConfig",
    "LangfuseFactory",
    "LangfuseClient",
    "IngestionResult",
    "MappingState",
    "bus_event_to_items",
    # errors
    "DirigentLangfuseError",
    "BusEventError",
    "ConfigError",
    "RegistryError",
    "LangfuseError",
    "LangfuseStatusError",
    "LangfuseTransportError",
]
