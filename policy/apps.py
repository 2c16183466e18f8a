from django.apps import AppConfig


class PolicyConfig(AppConfig):
    name = "policy"

    def ready(self) -> None:
        from policy.ml.video import set_default_feature_dir
        from policy.services.video_features import feature_store

        # Training and sampling read the features the gpu queue's task stored.
        set_default_feature_dir(lambda: feature_store().root)
