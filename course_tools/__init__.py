"""Course tooling for developers: run the notebooks, build standalone copies, keep notebooks clean, build the mini MS MARCO. Not shipped with course_utils."""
