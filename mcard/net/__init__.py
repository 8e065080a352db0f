"""mcard's one HTTP layer: every request (mcard's own and huggingface_hub's for mcard) is bounded here.

See :mod:`mcard.net.guard` for the rules and :mod:`mcard.net.limits` for the numbers.
"""

from .guard import CAP_KEY, DeadlineExceeded, NetRefused, NetSession, guarded_transport, origin
from .limits import NetLimits
from .session import Net, install_hf_client, open_session, stream

__all__ = ["CAP_KEY", "DeadlineExceeded", "Net", "NetLimits", "NetRefused", "NetSession", "guarded_transport",
           "install_hf_client", "open_session", "origin", "stream"]
