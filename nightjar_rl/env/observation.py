"""The observation vector, kept at its old path for existing imports: it is a contract of the whole
package and lives in `nightjar_rl.contracts.observation`."""

from nightjar_rl.contracts.observation import (
    HIST_START,
    OBS_INDEX,
    OBS_LAYOUT_VERSION,
    SCALAR_FIELDS,
    ObservationTracker,
    obs_field,
    obs_histogram,
    obs_layout,
    obs_size,
)

__all__ = ["HIST_START", "OBS_INDEX", "OBS_LAYOUT_VERSION", "SCALAR_FIELDS", "ObservationTracker",
           "obs_field", "obs_histogram", "obs_layout", "obs_size"]
