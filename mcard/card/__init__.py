"""Model cards: rendering (:mod:`.render`, with its provided-files rows in :mod:`.rows`), checking a card
against its entry (:mod:`.check`), evaluation tables (:mod:`.evals`) and named prompt templates
(:mod:`.prompts`). The Jinja2 templates are package data (see :mod:`.templates`).

What each format's card looks like (template, columns, tags) is the format's own
:class:`~mcard.formats.spec.CardSpec`.
"""
