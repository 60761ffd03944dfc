"""course_utils: the tested helpers behind the notebooks of the LLM adaptation course."""

__version__ = "0.1.0"
