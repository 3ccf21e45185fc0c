"""README's troubleshooting table quotes the phrases of qviz's error messages: each must be one qviz raises."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_troubleshooting_quotes_messages_qviz_raises():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    phrases = re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)
    source = "\n".join(p.read_text() for p in (ROOT / "qviz").rglob("*.py"))
    assert len(phrases) >= 10
    for phrase in phrases:
        assert phrase in source, f"README quotes {phrase!r}, which no qviz message contains"
