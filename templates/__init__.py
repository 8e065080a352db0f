"""The model-card templates (Jinja2), package data of mcard as ``mcard.card.templates``.

They live here, at the top of the repository (the design card's ``templates/``); the build maps
this folder to ``mcard.card.templates`` (``setup.py``), so an installed mcard finds them with
``importlib.resources`` however it was installed (editable, a wheel, ``pip install --target``,
``--user``). One template per card family (``<family>.md.j2``, see
:class:`mcard.formats.spec.CardSpec`), sharing the ``_*.md.j2`` partials.
"""
