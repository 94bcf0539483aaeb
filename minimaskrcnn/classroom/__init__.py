"""Classroom assignments: a teacher releases a part of Mask R-CNN as homework, a grader scores it.

``python -m minimaskrcnn classroom list | release | grade | check``; see docs/TEACHERS.md. The package
stays the full solution: the parts handed out are marked in place with nbgrader's
``### BEGIN SOLUTION`` / ``### END SOLUTION`` comment lines (:mod:`.markers`), listed in
:mod:`.catalogue`, stubbed by :mod:`.release`, scored by :mod:`.grade`, and self-tested by :mod:`.check`.
"""
from .catalogue import CATALOGUE, Assignment, ClassroomError, get

__all__ = ["CATALOGUE", "Assignment", "ClassroomError", "get"]
