"""ComfyUI in both directions: a request as the API-format graph ComfyUI runs (``graph_for``, written into every PNG
as the ``prompt`` chunk ComfyUI's own SaveImage writes), and a ComfyUI graph (or an A1111/Forge ``parameters`` text)
read back into a request (``request_from``; ``record_from_foreign`` for ``flux-vector info`` / ``generate --like``).

- ``names.py``: which file names a graph uses for flux_vector's weights, and back;
- ``graph.py``: ``graph_for(request, identity)``, the KSampler layout;
- ``read.py``: ``request_from(graph)`` / ``read_graph``, both layouts, ``Unreproducible`` naming the node and why;
- ``a1111.py``: the ``parameters`` text read back;
- ``hashes.py``: A1111's short sha256 forms (``Model hash``, ``Lora hashes``);
- ``record.py``: another tool's image as the record ``image_metadata.read_metadata`` returns.
"""

from .graph import GraphUnwritable, graph_for, graph_for_record
from .read import ComfyImage, Unreproducible, read_graph, request_from
from .record import COMFY_KEY, ForeignMetadataError, record_from_foreign

__all__ = [
    "COMFY_KEY",
    "ComfyImage",
    "ForeignMetadataError",
    "GraphUnwritable",
    "Unreproducible",
    "graph_for",
    "graph_for_record",
    "read_graph",
    "record_from_foreign",
    "request_from",
]
