"""Text front-end: upstream GPT-SoVITS's phone tables, G2P and text splitting."""
from specdec.models.text.frontend import Frontend

__all__ = ["Frontend"]
