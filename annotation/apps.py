from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_in, user_login_failed
        from django.db.models.signals import post_save

        from annotation import receivers
        from policy.signals import candidate_job_finished

        # ``policy`` may not import this app: it announces finished candidate jobs instead.
        candidate_job_finished.connect(receivers.on_candidate_job_finished,
                                       dispatch_uid="annotation.campaign_sampling")
        # The sign-in throttle counts every failed password check, whichever form made it.
        user_login_failed.connect(receivers.on_sign_in_failed,
                                  dispatch_uid="annotation.sign_in_failed")
        user_logged_in.connect(receivers.on_signed_in, dispatch_uid="annotation.signed_in")
        # A switched-off account's leases end with it (Django's auth saves the user).
        post_save.connect(receivers.on_user_saved, sender=get_user_model(),
                          dispatch_uid="annotation.user_saved")
