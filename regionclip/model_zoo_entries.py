"""The released files and models of the original RegionCLIP (its docs/MODEL_ZOO.md and scripts),
registered in :mod:`regionclip.model_zoo`. Which file goes with which config follows the
original's ``test_zeroshot_inference.sh``, ``test_transfer_learning.sh`` and
``visualize_zeroshot_inference.sh`` (docs/GETTING_STARTED.md)."""
from .model_zoo import ZooFile, ZooModel, register_file, register_model

ARCHS = {"rn50": "RN50", "rn50x4": "RN50x4"}
_X4 = {"rn50": "", "rn50x4": "_rn50x4"}

# ----------------------------------------------------------------------------------- files
for tag, arch in ARCHS.items():
    register_file(ZooFile(f"teacher_{arch}_student_{arch}_OAI_CLIP.pth", "clip", "clip", arch,
                          about=f"OpenAI CLIP {arch} (student and teacher of pretraining)"))
    for data, what in (("cc", "CC3M"), ("coco", "COCO Captions")):
        register_file(ZooFile(f"regionclip_pretrained-{data}_{tag}.pth", "regionclip",
                              "pretrained", arch,
                              about=f"RegionCLIP {arch} pretrained on {what}"))
    for data in ("coco", "lvis"):
        register_file(ZooFile(f"regionclip_finetuned-{data}_{tag}.pth", "regionclip", "detector",
                              arch, about=f"RegionCLIP {arch} detector transfer-learned on "
                                          f"{data.upper()} (open-vocabulary split)"))
    for stem, rows in (("coco_48_base_cls_emb", 48), ("coco_17_target_cls_emb", 17),
                       ("coco_65_cls_emb", 65), ("lvis_866_base_cls_emb", 866),
                       ("lvis_1203_cls_emb", 1203), ("coco_nouns_4764_emb", 4764)):
        register_file(ZooFile(f"{stem}{_X4[tag]}.pth", "concept_emb", "embeddings", arch, rows,
                              about=f"{rows} {arch} text embeddings"))

for filename, arch, about in (
        ("rpn_coco_48.pth", "R50-C4", "RPN of a Mask R-CNN R50-C4 on the 48 COCO base classes"),
        ("rpn_coco_65.pth", "R50-C4", "RPN of a Mask R-CNN R50-C4 on the 65 COCO OVD classes"),
        ("rpn_coco_80.pth", "R50-C4", "RPN of a Mask R-CNN R50-C4 on the 80 COCO classes"),
        ("rpn_lvis_866.pth", "R50-FPN", "RPN of a Mask R-CNN R50-FPN on the 866 LVIS base "
                                        "classes"),
        ("rpn_lvis_866_lsj.pth", "R50-FPN", "as rpn_lvis_866, LSJ recipe "
                                            "(MODEL.CLIP.OFFLINE_RPN_LSJ_PRETRAINED True)"),
        ("rpn_lvis_1203_clipbackbone.pth", "CLIP-RN50-FPN", "RPN with a CLIP RN50 backbone on "
                                                            "the 1203 LVIS classes")):
    register_file(ZooFile(filename, "rpn", "rpn", arch, about=about))

# ----------------------------------------------------------------------------------- models
LVIS_RPN = "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
COCO_RPN = "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x_ovd_FSD.yaml"
_CONFIG_ARCH = {"rn50": "R_50", "rn50x4": "R_50x4"}

for tag, arch in ARCHS.items():
    x4, cfg_arch = _X4[tag], _CONFIG_ARCH[tag]
    for data, what in (("cc", "CC3M"), ("coco", "COCO Captions")):
        register_model(ZooModel(
            f"regionclip_pretrained-{data}_{tag}",
            config=f"LVISv1-InstanceSegmentation/CLIP_fast_rcnn_{cfg_arch}_C4_custom_img.yaml",
            weights=f"regionclip_pretrained-{data}_{tag}.pth", rpn_config=LVIS_RPN,
            rpn="rpn_lvis_866.pth",
            embeddings=(("MODEL.CLIP.TEXT_EMB_PATH", f"lvis_1203_cls_emb{x4}.pth"),),
            about=f"zero-shot detection, any vocabulary: RegionCLIP {arch} pretrained on {what}"))
    register_model(ZooModel(
        f"regionclip_finetuned-coco_{tag}",
        config=f"COCO-InstanceSegmentation/CLIP_fast_rcnn_{cfg_arch}_C4_ovd.yaml",
        weights=f"regionclip_finetuned-coco_{tag}.pth", rpn_config=COCO_RPN, rpn="rpn_coco_48.pth",
        text_encoder=f"regionclip_pretrained-cc_{tag}.pth",
        embeddings=(("MODEL.CLIP.TEXT_EMB_PATH", f"coco_48_base_cls_emb{x4}.pth"),
                    ("MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", f"coco_65_cls_emb{x4}.pth")),
        opts=("MODEL.ROI_HEADS.SOFT_NMS_ENABLED", "True"),
        about=f"open-vocabulary COCO detector (48 base classes), RegionCLIP {arch}"))
    register_model(ZooModel(
        f"regionclip_finetuned-lvis_{tag}",
        config=f"LVISv1-InstanceSegmentation/CLIP_fast_rcnn_{cfg_arch}_C4.yaml",
        weights=f"regionclip_finetuned-lvis_{tag}.pth", rpn_config=LVIS_RPN,
        rpn="rpn_lvis_866_lsj.pth", text_encoder=f"regionclip_pretrained-cc_{tag}.pth",
        embeddings=(("MODEL.CLIP.TEXT_EMB_PATH", f"lvis_866_base_cls_emb{x4}.pth"),
                    ("MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", f"lvis_1203_cls_emb{x4}.pth")),
        opts=("MODEL.CLIP.OFFLINE_RPN_LSJ_PRETRAINED", "True",
              "MODEL.ROI_HEADS.SOFT_NMS_ENABLED", "True", "MODEL.MASK_ON", "False"),
        about=f"open-vocabulary LVIS detector (866 base classes), RegionCLIP {arch}"))
