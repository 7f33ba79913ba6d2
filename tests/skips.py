"""Why a test is skipped, in words a user can act on (the optional packages and how to install them)."""

THESEUS = "needs theseus-ai, installed by `sh scripts/install-theseus.sh` (the README's test command runs it)"
GYMNASIUM = "needs gymnasium: pip install -e '.[test]' (or gymnasium>=1.0)"
