"""The categories of the synthetic world, one module each (catalogue + measurement + gold formula)."""

from __future__ import annotations

from .base import CategoryWorld, Conversation
from .chitchat import Chitchat
from .objective_qa import ObjectiveQA
from .roleplay import Roleplay
from .text_creation import TextCreation

CATEGORY_WORLDS: dict[str, type[CategoryWorld]] = {
    world.name: world for world in (ObjectiveQA, Chitchat, TextCreation, Roleplay)
}

__all__ = ["CATEGORY_WORLDS", "CategoryWorld", "Chitchat", "Conversation", "ObjectiveQA", "Roleplay", "TextCreation"]
