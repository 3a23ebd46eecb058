"""Whole two-stage detectors (Mask R-CNN, Faster R-CNN, Cascade (Mask) R-CNN) as one ONNX graph of standard ops.

mmdet 3.3's test path (``TwoStageDetector.predict``) written again with the detector's own modules (backbone,
neck, RPN convs, RoI heads' layers, anchor generator, config values) and plain tensor ops, so that the
TorchScript ONNX exporter can trace it for one image of any height and width:

- the data preprocessor: channel flip, mean / std, zero padding to ``pad_size_divisor``;
- RPN (``RPNHead.predict_by_feat``): per level the ``nms_pre`` best anchors, box decoding clipped to the image,
  boxes of width or height <= ``min_bbox_size`` dropped, NMS of all levels together with mmcv's class-offset
  trick (``batched_nms``: ``boxes + level * (max coordinate + 1)``), ``max_per_img`` proposals;
- RoI heads (``StandardRoIHead`` / ``CascadeRoIHead``): ``SingleRoIExtractor``'s level mapping and RoIAlign per
  level, the box head, class-specific or agnostic decoding, the cascade's refinement (argmax label, stage score
  average) and ``multiclass_nms`` (score > ``score_thr``, class-offset NMS, ``max_per_img``);
- masks (``FCNMaskHead``): the label's channel of the mask head's sigmoid (the stage average for a cascade), and
  ``_do_paste_mask``'s bilinear paste into the image (``GridSample``) unless ``paste_masks=False``.

mmcv's ``nms`` and ``roi_align`` enter through two ``torch.autograd.Function`` s whose forward calls mmcv (the
values the tracer sees) and whose ``symbolic`` writes the standard ONNX op (``NonMaxSuppression``,
``RoiAlign`` opset 16+ with ``coordinate_transformation_mode='half_pixel'``, mmcv's ``aligned=True``): the
TorchScript exporter's public extension point; nothing of mmcv or torch is patched. The graph's outputs are
named as mmdeploy's ONNX Runtime backend names them: ``dets`` (1 x N x 5: x1, y1, x2, y2, score, in pixels of
the input image), ``labels`` (1 x N, int64), ``masks`` (1 x N x H x W mask probabilities, or 1 x N x M x M
RoI probabilities unpasted); the input is ``input`` (1 x 3 x H x W float, 0-255, the loading pipeline's
channel order, resized but not padded). Batch 1 only.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

INPUT = 'input'
OUTPUTS = ('dets', 'labels', 'masks')


# --- the two mmcv ops, as standard ONNX ops in the exported graph --------------------------------------------

def _tensor(size):
    """A size as a tensor: while tracing, sizes already are (0-d tensors the exporter follows); eagerly ints."""
    return size if isinstance(size, torch.Tensor) else torch.tensor(size)


def _const(g, value, dtype):
    return g.op('Constant', value_t=torch.tensor(value, dtype=dtype))


class _NMS(torch.autograd.Function):
    """Greedy NMS of one class, indices of the kept boxes by decreasing score: mmcv's ``nms`` (offset 0,
    suppresses IoU > threshold) when run, ONNX ``NonMaxSuppression`` (same rule) in the exported graph."""

    @staticmethod
    def forward(ctx, boxes, scores, iou_threshold: float, max_num: int):
        from mmcv.ops import nms
        _, keep = nms(boxes, scores, iou_threshold)
        return keep[:max_num] if max_num > 0 else keep

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold, max_num):
        boxes = g.op('Unsqueeze', boxes, _const(g, [0], torch.int64))                              # 1 x N x 4
        scores = g.op('Unsqueeze', scores, _const(g, [0, 1], torch.int64))                         # 1 x 1 x N
        limit = max_num if max_num > 0 else 2 ** 31 - 1
        selected = g.op('NonMaxSuppression', boxes, scores, _const(g, [limit], torch.int64),
                        _const(g, [iou_threshold], torch.float32))                                 # K x 3
        return g.op('Gather', selected, _const(g, 2, torch.int64), axis_i=1)                       # K


class _RoIAlign(torch.autograd.Function):
    """mmcv's ``roi_align`` (average pooling) on one image's feature map; ONNX ``RoiAlign`` when exported."""

    @staticmethod
    def forward(ctx, feature, boxes, batch_index, output_size, spatial_scale, sampling_ratio, aligned):
        from mmcv.ops import roi_align
        rois = torch.cat([batch_index[:, None].to(boxes.dtype), boxes], 1)
        return roi_align(feature, rois, output_size, spatial_scale, sampling_ratio, 'avg', aligned)

    @staticmethod
    def symbolic(g, feature, boxes, batch_index, output_size, spatial_scale, sampling_ratio, aligned):
        return g.op('RoiAlign', feature, boxes, batch_index, mode_s='avg',
                    coordinate_transformation_mode_s='half_pixel' if aligned else 'output_half_pixel',
                    output_height_i=output_size[0], output_width_i=output_size[1],
                    sampling_ratio_i=sampling_ratio, spatial_scale_f=spatial_scale)


def nms(boxes, scores, iou_threshold: float, max_num: int = -1):
    return _NMS.apply(boxes, scores, float(iou_threshold), int(max_num))


def class_offset_nms(boxes, scores, groups, nms_cfg: dict, max_num: int = -1):
    """mmcv's ``batched_nms`` (not class-agnostic): one NMS over boxes moved apart by group. The same offset
    boxes as mmcv's, so the same IoUs to the bit, whichever of its two paths (one NMS, or one per group above
    ``split_thr`` boxes) mmcv takes: groups never overlap after the offset. The -1e18 keeps the maximum defined
    when there are no boxes (a box coordinate is never that low; the exporter's shape inference converts such a
    constant to int64, so not the float's lowest value)."""
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_tensor([-1e18])]).max()
    offsets = groups.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, nms_cfg['iou_threshold'], max_num)


def check_nms_cfg(nms_cfg, where: str) -> dict:
    nms_cfg = dict(nms_cfg)
    unsupported = {k: v for k, v in nms_cfg.items() if k not in ('type', 'iou_threshold', 'split_thr')}
    if nms_cfg.get('type', 'nms') != 'nms' or unsupported or nms_cfg.get('class_agnostic'):
        raise ValueError(f'{where}: {nms_cfg} is not exportable (only greedy NMS, dict(type="nms", '
                         'iou_threshold=...), maps to ONNX NonMaxSuppression); set it in the config.')
    return nms_cfg


# --- pieces of mmdet's test path -------------------------------------------------------------------------------

def decode(coder, rois, deltas, image_size, wh_ratio_clip: float = 16 / 1000):
    """``DeltaXYWHBBoxCoder.decode`` (mmdet's ``delta2bbox``, same ops in the same order) for boxes (M x 4) and
    deltas (M x 4), clipped to ``image_size`` (a float tensor: height, width) when the coder clips."""
    import numpy as np
    means = deltas.new_tensor(coder.means).view(1, -1)
    stds = deltas.new_tensor(coder.stds).view(1, -1)
    denorm = deltas * stds + means
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
    pwh = rois[:, 2:] - rois[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = float(np.abs(np.log(wh_ratio_clip)))
    if coder.add_ctr_clamp:
        dxy_wh = torch.clamp(dxy_wh, max=coder.ctr_clamp, min=-coder.ctr_clamp)
        dwh = torch.clamp(dwh, max=max_ratio)
    else:
        dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if coder.clip_border:
        limit = image_size.flip(0).repeat(2)[None]  # W, H, W, H
        boxes = torch.min(torch.clamp(boxes, min=0), limit)
    return boxes


def _check_coder(coder, where: str):
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    if type(coder) is not DeltaXYWHBBoxCoder:
        raise ValueError(f'{where}: box coder {type(coder).__name__} is not exportable (only DeltaXYWHBBoxCoder).')


class RoIExtractor(nn.Module):
    """``SingleRoIExtractor``: each box to its pyramid level (``floor(log2(sqrt(wh) / finest_scale + 1e-6))``,
    clamped, written as comparisons with powers of two: exact, and ONNX has no Log2), RoIAlign there."""

    def __init__(self, extractor):
        super().__init__()
        from mmcv.ops import RoIAlign
        from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
        if type(extractor) is not SingleRoIExtractor:
            raise ValueError(f'RoI extractor {type(extractor).__name__} is not exportable (only SingleRoIExtractor).')
        for layer in extractor.roi_layers:
            if type(layer) is not RoIAlign or layer.pool_mode != 'avg':
                raise ValueError(f'RoI layer {layer} is not exportable (only mmcv RoIAlign with pool_mode="avg", '
                                 'ONNX RoiAlign; its "max" mode differs from mmcv\'s).')
        self.layers = [(tuple(layer.output_size), float(layer.spatial_scale), int(layer.sampling_ratio),
                        bool(layer.aligned)) for layer in extractor.roi_layers]
        self.num_inputs = extractor.num_inputs
        self.finest_scale = extractor.finest_scale
        self.out_channels = extractor.out_channels

    def levels(self, boxes):
        scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        value = scale / self.finest_scale + 1e-6
        level = torch.zeros_like(value, dtype=torch.int64)
        for k in range(1, self.num_inputs):
            level = level + (value >= 2.0 ** k).to(torch.int64)
        return level

    def forward(self, features, boxes):
        features = features[:self.num_inputs]
        output_size = self.layers[0][0]
        out = features[0].new_zeros(boxes.shape[0], self.out_channels, *output_size)
        if len(features) == 1:
            return self._align(features[0], boxes, self.layers[0])
        levels = self.levels(boxes)
        for i, feature in enumerate(features):
            index = (levels == i).nonzero().reshape(-1)
            out = out.index_put((index,), self._align(feature, boxes[index], self.layers[i]))
        return out

    @staticmethod
    def _align(feature, boxes, layer):
        output_size, scale, sampling_ratio, aligned = layer
        batch_index = torch.zeros_like(boxes[:, 0], dtype=torch.int64)
        return _RoIAlign.apply(feature, boxes, batch_index, output_size, scale, sampling_ratio, aligned)


class TwoStageDetectorGraph(nn.Module):
    """input (1 x 3 x H x W, 0-255) -> dets (1 x N x 5), labels (1 x N)[, masks]: mmdet's ``predict`` of
    the detector on that image (img_shape = ori_shape = H x W, scale factor 1)."""

    def __init__(self, detector, paste_masks: bool = True):
        super().__init__()
        from mmdet.models.dense_heads import RPNHead
        from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
        from mmdet.models.roi_heads.mask_heads import FCNMaskHead

        from .export import _Normalize
        self.detector = detector
        self.normalize = _Normalize(detector.data_preprocessor)
        self.pad_divisor = int(getattr(detector.data_preprocessor, 'pad_size_divisor', 1))
        self.pad_value = float(getattr(detector.data_preprocessor, 'pad_value', 0))
        self.paste_masks = paste_masks
        rpn, roi = detector.rpn_head, detector.roi_head
        if type(rpn) is not RPNHead:
            raise ValueError(f'rpn_head {type(rpn).__name__} is not exportable (only RPNHead).')
        _check_coder(rpn.bbox_coder, 'rpn_head')
        self.rpn_cfg = dict(rpn.test_cfg)
        self.rpn_nms = check_nms_cfg(self.rpn_cfg['nms'], 'test_cfg.rpn.nms')
        self.cascade = type(roi) is CascadeRoIHead
        if not self.cascade and type(roi) is not StandardRoIHead:
            raise ValueError(f'roi_head {type(roi).__name__} is not exportable (StandardRoIHead or CascadeRoIHead).')
        if getattr(roi, 'with_shared_head', False):
            raise ValueError('roi_head with a shared_head is not exportable.')
        stages = range(roi.num_stages) if self.cascade else [None]
        pick = (lambda modules, s: modules[s]) if self.cascade else (lambda module, s: module)
        self.bbox_heads = [pick(roi.bbox_head, s) for s in stages]
        self.bbox_extractors = nn.ModuleList(RoIExtractor(pick(roi.bbox_roi_extractor, s)) for s in stages)
        for i, head in enumerate(self.bbox_heads):
            _check_coder(head.bbox_coder, f'bbox_head[{i}]')
            if head.custom_cls_channels or head.custom_activation or not (head.with_cls and head.with_reg):
                raise ValueError(f'bbox_head[{i}] ({type(head).__name__}) is not exportable: custom score '
                                 'activation or no classifier / regressor.')
        self.rcnn_cfg = dict(roi.test_cfg)
        self.rcnn_nms = check_nms_cfg(self.rcnn_cfg['nms'], 'test_cfg.rcnn.nms')
        self.with_mask = roi.with_mask
        if self.with_mask:
            self.mask_heads = [pick(roi.mask_head, s) for s in stages]
            self.mask_extractors = nn.ModuleList(RoIExtractor(pick(roi.mask_roi_extractor, s)) for s in stages)
            for head in self.mask_heads:
                if type(head) is not FCNMaskHead:
                    raise ValueError(f'mask_head {type(head).__name__} is not exportable (only FCNMaskHead).')

    def output_names(self) -> list[str]:
        return list(OUTPUTS if self.with_mask else OUTPUTS[:2])

    # the test path

    def forward(self, image: torch.Tensor):
        height, width = image.shape[2], image.shape[3]
        image_size = torch.stack([_tensor(height), _tensor(width)]).to(torch.float32)
        x = self.normalize(image)
        if self.pad_divisor > 1:
            pad_h = (self.pad_divisor - height % self.pad_divisor) % self.pad_divisor
            pad_w = (self.pad_divisor - width % self.pad_divisor) % self.pad_divisor
            x = F.pad(x, (0, pad_w, 0, pad_h), value=self.pad_value)
        features = self.detector.extract_feat(x)
        proposals = self.rpn(features, image_size)
        boxes, scores, labels = self.rcnn(features, proposals, image_size)
        outputs = [torch.cat([boxes, scores[:, None]], 1)[None], labels[None]]
        if self.with_mask:
            outputs.append(self.masks(features, boxes, labels, height, width)[None])
        return tuple(outputs)

    def rpn(self, features, image_size):
        rpn, cfg = self.detector.rpn_head, self.rpn_cfg
        cls_scores, bbox_preds = rpn(features)
        nms_pre = cfg.get('nms_pre', -1)
        all_scores, all_deltas, all_anchors, all_levels = [], [], [], []
        for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
            anchors = rpn.prior_generator.single_level_grid_priors(
                cls_score.shape[2:], level, dtype=cls_score.dtype, device=cls_score.device)
            deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, rpn.bbox_coder.encode_size)
            scores = cls_score[0].permute(1, 2, 0).reshape(-1, rpn.cls_out_channels)
            scores = scores.sigmoid() if rpn.use_sigmoid_cls else scores.softmax(-1)[:, :-1]
            scores = scores.reshape(-1)
            if nms_pre > 0:
                k = torch.clamp(_tensor(scores.shape[0]), max=nms_pre)
                scores, index = scores.topk(k)
                deltas, anchors = deltas[index], anchors[index]
            all_scores.append(scores)
            all_deltas.append(deltas)
            all_anchors.append(anchors)
            all_levels.append(torch.full_like(scores, level, dtype=torch.int64))
        scores, levels = torch.cat(all_scores), torch.cat(all_levels)
        boxes = decode(rpn.bbox_coder, torch.cat(all_anchors), torch.cat(all_deltas), image_size)
        if cfg.get('min_bbox_size', -1) >= 0:
            valid = ((boxes[:, 2] - boxes[:, 0] > cfg['min_bbox_size'])
                     & (boxes[:, 3] - boxes[:, 1] > cfg['min_bbox_size'])).nonzero().reshape(-1)
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        keep = class_offset_nms(boxes, scores, levels, self.rpn_nms, cfg['max_per_img'])
        return boxes[keep]

    def rcnn(self, features, rois, image_size):
        """The box heads (every cascade stage), then multiclass NMS: boxes, scores, labels."""
        stage_scores = []
        for stage, (extractor, head) in enumerate(zip(self.bbox_extractors, self.bbox_heads)):
            cls_score, bbox_pred = head(extractor(features, rois))
            stage_scores.append(cls_score)
            if stage < len(self.bbox_heads) - 1:  # the cascade's refinement
                label = cls_score[:, :-1].argmax(dim=1)
                if not head.reg_class_agnostic:
                    index = torch.stack([label * 4 + i for i in range(4)], 1)
                    bbox_pred = torch.gather(bbox_pred, 1, index)
                rois = decode(head.bbox_coder, rois, bbox_pred, image_size)
        cls_score = stage_scores[0] if len(stage_scores) == 1 else sum(stage_scores) / float(len(stage_scores))
        head = self.bbox_heads[-1]
        scores = F.softmax(cls_score, dim=-1)
        num_classes = scores.shape[1] - 1
        per_roi = 1 if head.reg_class_agnostic else num_classes
        repeated = rois[:, None, :].expand(rois.shape[0], per_roi, 4).reshape(-1, 4)
        boxes = decode(head.bbox_coder, repeated, bbox_pred.reshape(-1, 4), image_size)
        boxes = boxes.reshape(rois.shape[0], per_roi, 4).expand(rois.shape[0], num_classes, 4).reshape(-1, 4)
        scores = scores[:, :-1].reshape(-1)
        labels = torch.arange(num_classes)[None].expand(rois.shape[0], num_classes).reshape(-1)
        valid = (scores > self.rcnn_cfg['score_thr']).nonzero().reshape(-1)
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        keep = class_offset_nms(boxes, scores, labels, self.rcnn_nms, self.rcnn_cfg['max_per_img'])
        return boxes[keep], scores[keep], labels[keep]

    def masks(self, features, boxes, labels, height, width):
        """Mask probabilities of the label's channel (averaged over a cascade's stages), pasted into the image."""
        probabilities = [head(extractor(features, boxes)).sigmoid()
                         for extractor, head in zip(self.mask_extractors, self.mask_heads)]
        masks = probabilities[0] if len(probabilities) == 1 else torch.stack(probabilities).mean(0)
        if not self.mask_heads[-1].class_agnostic:
            masks = torch.gather(masks, 1, labels[:, None, None, None].expand(-1, 1, *masks.shape[2:]))
        if not self.paste_masks:
            return masks[:, 0]
        return paste_masks(masks, boxes, height, width)


def paste_masks(masks, boxes, height, width):
    """mmdet's CPU ``_do_paste_mask`` (N x 1 x M x M -> N x H x W probabilities): the bilinear resampling of each
    mask into its box, inside the window mmdet samples (the box rounded out by one pixel, clamped to the image)
    and zero outside it, which also bounds the mask of a box of zero width or height as mmdet's."""
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    rows = torch.arange(height, device=boxes.device).to(torch.float32)
    cols = torch.arange(width, device=boxes.device).to(torch.float32)
    img_y = (rows + 0.5 - y0) / (y1 - y0) * 2 - 1
    img_x = (cols + 0.5 - x0) / (x1 - x0) * 2 - 1
    img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
    img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
    n = masks.shape[0]
    gx = img_x[:, None, :].expand(n, img_y.shape[1], img_x.shape[1])
    gy = img_y[:, :, None].expand(n, img_y.shape[1], img_x.shape[1])
    grid = torch.stack([gx, gy], dim=3)
    pasted = F.grid_sample(masks.to(torch.float32), grid, align_corners=False)[:, 0]
    in_x = (cols >= torch.clamp(torch.floor(x0) - 1, min=0)) & (cols < torch.ceil(x1) + 1)
    in_y = (rows >= torch.clamp(torch.floor(y0) - 1, min=0)) & (rows < torch.ceil(y1) + 1)
    return pasted * (in_y[:, :, None] & in_x[:, None, :]).to(pasted.dtype)


def is_two_stage(detector) -> bool:
    return getattr(detector, 'rpn_head', None) is not None and getattr(detector, 'roi_head', None) is not None


# --- checking the exported file against mmdet's own predict -----------------------------------------------------

def mmdet_predict(detector, image: torch.Tensor):
    """mmdet's inference of ``image`` (1 x 3 x H x W float, 0-255): the data preprocessor, then
    ``detector.predict`` with img_shape = ori_shape = H x W and scale factor 1 (boxes and masks in the
    input's pixels). Returns boxes, scores, labels and binary masks (or None) as numpy arrays."""
    from mmdet.structures import DetDataSample
    height, width = image.shape[2:]
    sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                         scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        data = detector.data_preprocessor(dict(inputs=[image[0]], data_samples=[sample]), False)
        result = detector.predict(data['inputs'], data['data_samples'], rescale=True)[0].pred_instances
    masks = result.masks.numpy() if 'masks' in result else None
    return result.bboxes.numpy(), result.scores.numpy(), result.labels.numpy(), masks


def match_detections(expected, got, mask_threshold: float = 0.5, box_tolerance: float = 0.5,
                     score_tolerance: float = 1e-4, min_mask_iou: float = 0.98):
    """Matches mmdet's detections (``mmdet_predict``) one to one with the exported graph's outputs (``dets``,
    ``labels``[, ``masks``]; masks pasted, thresholded here at ``mask_threshold``): each PyTorch detection, by
    decreasing score, takes the closest unmatched ONNX one with the same label, every box coordinate within
    ``box_tolerance`` px and the score within ``score_tolerance``. Returns a summary dict; ``failures`` lists
    every unmatched detection on either side and every matched mask with IoU < ``min_mask_iou``."""
    import numpy as np
    boxes, scores, labels, masks = expected
    dets, got_labels = got[0][0], got[1][0]
    got_masks = got[2][0] >= mask_threshold if masks is not None and len(got) > 2 else None
    unmatched = list(range(len(dets)))
    failures, worst_box, worst_score, worst_iou = [], 0.0, 0.0, 1.0
    for i in np.argsort(-scores, kind='stable'):
        candidates = [j for j in unmatched if got_labels[j] == labels[i]
                      and np.abs(dets[j, :4] - boxes[i]).max() <= box_tolerance
                      and abs(dets[j, 4] - scores[i]) <= score_tolerance]
        if not candidates:
            failures.append(f'pytorch detection {i} (label {labels[i]}, score {scores[i]:.6f}, box '
                            f'{np.round(boxes[i], 2).tolist()}) has no match in onnxruntime')
            continue
        j = min(candidates, key=lambda j: np.abs(dets[j, :4] - boxes[i]).max())
        unmatched.remove(j)
        worst_box = max(worst_box, float(np.abs(dets[j, :4] - boxes[i]).max()))
        worst_score = max(worst_score, float(abs(dets[j, 4] - scores[i])))
        if got_masks is not None:
            union = np.logical_or(masks[i], got_masks[j]).sum()
            iou = np.logical_and(masks[i], got_masks[j]).sum() / union if union else 1.0
            worst_iou = min(worst_iou, float(iou))
            if iou < min_mask_iou:
                failures.append(f'detection {i}: mask IoU {iou:.4f} < {min_mask_iou}')
    failures += [f'onnxruntime detection {j} (label {got_labels[j]}, score {dets[j, 4]:.6f}) has no match in '
                 'pytorch' for j in unmatched]
    return dict(pytorch=len(scores), onnxruntime=len(dets), matched=len(scores) - sum(
        'no match in onnxruntime' in f for f in failures), max_box_diff=worst_box, max_score_diff=worst_score,
        min_mask_iou=worst_iou if got_masks is not None else None, failures=failures)
