# 160k iterations of AdamW: 1500 iterations of linear warm-up from lr * 1e-6, then linear decay
# (poly, power 1) to 0 at 160k; validation and a checkpoint every 16k iterations (mmseg's 160k loop and hooks).
_base_ = ['mmseg::_base_/schedules/schedule_160k.py']

# _delete_: mmseg's SGD keys (momentum) must not leak into AdamW. The top-level `optimizer` is replaced too,
# so that no stale SGD dict is left in the config.
optimizer = dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(optimizer))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
