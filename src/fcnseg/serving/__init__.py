"""Serving a model over HTTP: an API other programs call and a page anyone can use in a browser.

* :mod:`fcnseg.serving.app` - the FastAPI app (``create_app``, ``app_from_env`` for uvicorn workers).
* :mod:`fcnseg.serving.config` - ``ServeConfig`` and ``load_segmenter``, the one place a model is loaded.
* :mod:`fcnseg.serving.pool` - the bounded inference pool (threads + waiting line, 503 when full).
* :mod:`fcnseg.serving.uploads` - request bodies within limits, multipart, safe image decoding.
* ``static/`` - the page (HTML, JS, CSS), shipped as package data; nothing is loaded from a CDN.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart): ``pip install 'fcnseg[serve]'``.
"""
