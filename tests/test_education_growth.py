import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.pipelines.education.growth import GradeModel, check_grade_stages, default_grade_stages
from kdlab.registry import MODELS


def _student(name):
    torch.manual_seed(0)
    if name == "mlp":
        return MODELS.get("mlp").obj(num_classes=6, input_shape=(5,), hidden=[8, 8, 8]), torch.randn(4, 5)
    if name == "cnn1d":
        return MODELS.get("cnn1d").obj(num_classes=6, input_shape=(1, 12), channels=[4, 8, 8]), torch.randn(4, 1, 12)
    return MODELS.get(name).obj(num_classes=6, input_shape=(1, 8, 8)), torch.randn(4, 1, 8, 8)


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "resnet8"])
def test_growth_keeps_the_body_and_replaces_the_head(name):
    student, x = _student(name)
    plain_keys = {k: v.shape for k, v in student.state_dict().items()}
    g1 = GradeModel(student, 1, [4, 5], final=False, sample=x)
    assert g1(x).shape == (4, 2)  # TR head over the classes seen so far
    # The stages in use and the TR head are optimised; later stages and fc wait their grade.
    stage1 = set(map(id, student.get_submodule(student.stage_names[1]).parameters()))
    later = set(map(id, student.get_submodule(student.stage_names[2]).parameters())) | set(map(id, student.fc.parameters()))
    trained = set(map(id, g1.trainable()))
    assert stage1 <= trained and not (later & trained)
    assert set(map(id, g1.head.parameters())) <= trained
    # "Training" grade 1 changes stage-1 weights; grade 2 must start from them.
    with torch.no_grad():
        for p in student.get_submodule(student.stage_names[1]).parameters():
            p.add_(1.0)
    snapshot = {k: v.clone() for k, v in student.state_dict().items()}
    g2 = GradeModel(student, 2, [4, 5, 0, 1], final=False, sample=x)
    assert g2.student is student and g2.head is not g1.head
    for k, v in student.state_dict().items():  # growing re-initialises nothing
        assert torch.equal(v, snapshot[k]), k
    assert g2(x).shape == (4, 4)
    # The last grade uses the student's own head: the model is exactly the plain student.
    g3 = GradeModel(student, len(student.stage_names) - 1, range(6), final=True, sample=x)
    assert g3.head is None
    assert {k: v.shape for k, v in g3.student.state_dict().items()} == plain_keys
    g3.eval()
    student.eval()
    assert torch.allclose(g3(x), student(x))
    fresh, _ = _student(name)
    missing, unexpected = fresh.load_state_dict(student.state_dict(), strict=True)
    assert not missing and not unexpected
    assert set(map(id, g3.trainable())) == set(map(id, student.parameters()))


def test_partial_train_mode_leaves_unused_batchnorm_statistics_alone():
    student, x = _student("resnet8")
    g1 = GradeModel(student, 1, [0, 1], final=False, sample=x)
    before = student.layer3[0].bn1.running_mean.clone()
    g1.set_mode(True)
    g1(x)
    assert torch.equal(student.layer3[0].bn1.running_mean, before)
    assert not student.layer3.training and student.layer1.training


def test_grade_stages_defaults_and_checks():
    assert default_grade_stages(3, 3) == [1, 2, 3]
    assert default_grade_stages(6, 3) == [2, 4, 6]
    assert default_grade_stages(2, 3)[-1] == 2
    with pytest.raises(KdlabError, match="last grade must use all 3"):
        check_grade_stages([1, 2, 2], 3)


def test_tr_head_pooling_global_or_by_cells():
    """`tr_pool: 4` (the reference code's 4x4 average pool) keeps the cells of a map larger
    than 4 apart; a map of 4 or less is pooled whole, as the global pool does."""
    torch.manual_seed(0)
    student = MODELS.get("cnn2d").obj(num_classes=6, input_shape=(1, 8, 8), channels=[8, 16, 32])
    x = torch.randn(4, 1, 8, 8)
    g1 = GradeModel(student, 1, [0, 1], final=False, sample=x, pool=4).eval()  # stage 1: 8x8 maps
    assert g1.head.fc.in_features == 32 * 2 * 2
    conv, bn = g1.head.proj[0], g1.head.proj[1]
    feat = bn(conv(student.features(x, upto=1)))
    cells = torch.stack([feat[:, :, i:i + 4, j:j + 4].mean((2, 3)) for i in (0, 4) for j in (0, 4)], 2)  # (B, C, 4)
    assert torch.allclose(g1(x), g1.head.fc(cells.flatten(1)), atol=1e-6)
    glob = GradeModel(student, 1, [0, 1], final=False, sample=x).eval()
    assert glob.head.fc.in_features == 32
    feat = glob.head.proj[1](glob.head.proj[0](student.features(x, upto=1)))
    assert torch.allclose(glob(x), glob.head.fc(feat.mean((2, 3))), atol=1e-6)
    for pool in (4, 8):  # stage 2: 4x4 maps, pooled whole
        assert GradeModel(student, 2, [0, 1], final=False, sample=x, pool=pool).head.fc.in_features == 32
