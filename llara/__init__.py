"""The ``llara`` command line: the layer above everything it calls.

``llara.cli`` dispatches one sub-command per job to a thin ``main(argv)`` in ``llara.scripts``;
``llara.pipeline`` chains the stages of the main job. This package may import ``trainers``, ``hub_card``
and ``modeling_llara``; none of them imports it.
"""
