"""Virtual projection positional encoding: 3D token centres -> places in a frozen source's
1D or 2D position table (no image is rendered)."""
from .encoding import LearnedPositionEncoding, ProjectionConfig, ViewPositions, VirtualProjection
from .sampling import sample_grid, sample_rows
from .views import cube_rotations, face_diagonals, pixels_to_grid, project_1d, project_2d

__all__ = ["ProjectionConfig", "ViewPositions", "VirtualProjection", "LearnedPositionEncoding", "sample_rows",
           "sample_grid", "cube_rotations", "face_diagonals", "project_1d", "project_2d", "pixels_to_grid"]
