"""SENTINEL IMMUNE's built-in Sigma rules (data, not code); see README.md."""
