"""On-device knowledge: sqlite-vec + FTS5 index, embedders, chunking, hybrid retrieval, sync.

Public entry points others use:

- :func:`edged.knowledge.tool.make_search_tool` - the ``search_knowledge`` Live tool,
- :func:`edged.knowledge.status.index_status` - facts for ``edgectl status``,
- ``edged-index-sync`` (:mod:`edged.knowledge.sync`) - builds and updates the index.

``make eval`` runs :mod:`edged.knowledge.evaluate` (real corpora, labelled questions).

:data:`SAMPLE_KB` is the packaged sample knowledge base the demo indexes.
"""

from pathlib import Path

SAMPLE_KB = Path(__file__).resolve().parent.parent / "data" / "knowledge"
