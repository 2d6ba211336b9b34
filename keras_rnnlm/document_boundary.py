"""Which document boundary a text is evaluated with (``evaluate --document-boundary``).

Static (``keras_rnnlm.runs.evaluate_text_file``) and dynamic
(``keras_rnnlm.dynamic_text.dynamic_evaluate_text_file``) evaluation resolve it the same way.
"""

#: ``document_boundary="none"`` (``--document-boundary none``): no resets, whatever the run's own
NO_DOCUMENT_BOUNDARY = "none"


def resolve_document_boundary(
    requested: str | None, info: dict, mode: str | None = None
) -> str | None:
    """The document boundary a text is evaluated with: the request, else the run's own.

    Args:
        requested: None (the run's own ``document_boundary``, from its ``config.json``; exports
            have none), ``"none"`` (no resets: the state carried through the whole text),
            ``"blank"`` or a token (as training's ``--document-boundary``).
        info: ``load_any_model``'s info.
        mode: the mode the text is read in (default ``info["mode"]``); a boundary needs
            ``"stream"`` (sentence mode already reads every sentence from zero states).

    Returns:
        ``"blank"``, a token, or None (no resets).

    Example:

    >>> resolve_document_boundary(None, {"mode": "stream", "document_boundary": "blank"})
    'blank'
    >>> resolve_document_boundary("none", {"mode": "stream", "document_boundary": "blank"})
    """
    mode = mode or info["mode"]
    if requested is None:
        return info.get("document_boundary") if mode == "stream" else None
    if not isinstance(requested, str) or not requested.strip():
        raise ValueError(
            f"document_boundary must be 'blank', a token or 'none', got {requested!r}."
        )
    if requested == NO_DOCUMENT_BOUNDARY:
        return None
    if mode != "stream":
        raise ValueError(
            f"document_boundary={requested!r} needs stream mode (sentence mode already reads "
            "every sentence from zero states); pass --mode stream."
        )
    return requested
