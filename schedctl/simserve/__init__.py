"""`schedctl sim serve`: the embedded engine behind SGLang's HTTP surface, a stand-in for one GPU replica
(``app.py``), its SGLang metrics (``metrics.py``), and a testbed of several on 127.0.0.1 (``fleet.py``)."""
