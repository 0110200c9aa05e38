"""The other API shapes fluxhost answers in (BFL's, OpenAI's images API): each maps its own body to
the door-neutral run request and words its refusals its own way."""
