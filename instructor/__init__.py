"""Instructor material (not part of minilora).

``solutions.py``: one reference function per checker in ``minilora.course.checkers``.
``chNN.py``: worked solutions to chapter NN's numbered exercises, checked by
``tests/test_instructor_chNN.py``.
"""
