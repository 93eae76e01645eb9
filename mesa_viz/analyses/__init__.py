"""One home per analysis.  Each folder holds what one analysis is: its
computation, its rows (schema and resume key), ``figures.py``, ``explorer.py``,
``section.py`` (its part of the report) and ``cli.py`` (its ``mesa-viz``
command); the folder's name is the command's, the report section's and the test
folder's.  Importing a folder loads its computation only (no plotly, no
ipywidgets): figures and explorers load where they are used (``mesa_viz.plots``,
``mesa_viz.widgets``).  Adding one: ``docs/adding-an-analysis.md``.
"""

#: The analyses, in the order the report shows them.
ANALYSES = ("layouts", "attention", "thresholds", "passkey", "bench", "explain",
            "attention_map", "perplexity", "ruler", "crossings", "theory")
